//! Captions the way people write them: usually the colour and the shape, sometimes only one of
//! them, sometimes the size, the position or the background; for two objects, their relation
//! read off the placement.
//!
//! Every caption is built from a [`Claim`], a structured statement of what it says, so we can
//! check whether a caption is true of *any* scene ([`Claim::is_true_of`]). Contrastive training
//! uses that to count every true caption in a batch as a match (no false negatives).

use rand::Rng;
use serde::Serialize;

use super::scene::{Background, Color, Object, Position, Relation, Scene, Shape, Size};

/// What a caption says about one object; `None` means "not mentioned".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ObjectClaim {
    pub shape: Option<Shape>,
    pub color: Option<Color>,
    pub size: Option<Size>,
    pub position: Option<Position>,
}

impl ObjectClaim {
    fn is_true_of(&self, o: &Object) -> bool {
        self.shape.is_none_or(|s| s == o.shape)
            && self.color.is_none_or(|c| c == o.color)
            && self.size.is_none_or(|s| s == o.size)
            && self.position.is_none_or(|p| p == o.position)
    }

    /// "a red circle", "a large blue star", "an orange shape".
    pub fn phrase(&self) -> String {
        let mut words: Vec<&str> = Vec::new();
        if let Some(s) = self.size {
            words.push(s.word());
        }
        if let Some(c) = self.color {
            words.push(c.word());
        }
        words.push(self.shape.map_or("shape", Shape::word));
        let phrase = words.join(" ");
        let mut s = format!("{} {phrase}", article(&phrase));
        if let Some(p) = self.position {
            s.push(' ');
            s.push_str(&p.phrase());
        }
        s
    }
}

/// Everything a caption says: one or two objects, how they sit, the background.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Claim {
    pub objects: Vec<ObjectClaim>,
    /// For two objects: `Some(relation)` ("above", ..., "next to"), `None` for "A and B".
    pub relation: Option<Relation>,
    pub background: Option<Background>,
}

impl Claim {
    /// What `scene` shows, colour and shape of each object and (for two) their relation, with
    /// size, position and background left out: "a red circle above a blue square".
    pub fn colours_shapes_relation(scene: &Scene) -> Self {
        let objects = &scene.objects;
        Claim {
            objects: objects
                .iter()
                .map(|o| ObjectClaim {
                    shape: Some(o.shape),
                    color: Some(o.color),
                    size: None,
                    position: None,
                })
                .collect(),
            relation: (objects.len() == 2).then(|| relation_of(&objects[0], &objects[1])),
            background: None,
        }
    }

    /// The caption text.
    pub fn text(&self) -> String {
        let mut s = match self.objects.as_slice() {
            [a] => a.phrase(),
            [a, b] => match self.relation {
                Some(r) => format!("{} {} {}", a.phrase(), r.word(), b.phrase()),
                None => format!("{} and {}", a.phrase(), b.phrase()),
            },
            _ => String::new(),
        };
        if let Some(bg) = self.background {
            s.push_str(&format!(" on a {} background", bg.word()));
        }
        s
    }

    /// Whether the caption is a true description of `scene`: same number of objects, each
    /// claim true of its object (in either order for "and" and "next to"), the relation holds.
    pub fn is_true_of(&self, scene: &Scene) -> bool {
        if self.background.is_some_and(|b| b != scene.background)
            || self.objects.len() != scene.objects.len()
        {
            return false;
        }
        match (self.objects.as_slice(), scene.objects.as_slice()) {
            ([c], [o]) => c.is_true_of(o),
            ([ca, cb], [oa, ob]) => {
                let in_order = ca.is_true_of(oa) && cb.is_true_of(ob);
                let swapped = ca.is_true_of(ob) && cb.is_true_of(oa);
                match self.relation {
                    None | Some(Relation::NextTo) => in_order || swapped,
                    Some(r) => {
                        (in_order && relation_of(oa, ob) == r)
                            || (swapped && relation_of(ob, oa) == r)
                    }
                }
            }
            _ => false,
        }
    }
}

/// How `a` sits relative to `b` (the rule captions use).
pub fn relation_of(a: &Object, b: &Object) -> Relation {
    relation_between(a.center, b.center)
}

/// How a point sits relative to another (canvas units, y down): the larger of the vertical and
/// horizontal offsets decides between above/below and left of/right of.
pub fn relation_between(a: [f32; 2], b: [f32; 2]) -> Relation {
    let dx = a[0] - b[0];
    let dy = a[1] - b[1];
    if dy.abs() >= dx.abs() {
        if dy < 0.0 {
            Relation::Above
        } else {
            Relation::Below
        }
    } else if dx < 0.0 {
        Relation::LeftOf
    } else {
        Relation::RightOf
    }
}

/// "a" or "an" before a word.
fn article(next: &str) -> &'static str {
    if next.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// The caption used to ask about a (colour, shape) pair: "a red circle", "an orange star".
pub fn pair_prompt(color: Color, shape: Shape) -> String {
    ObjectClaim {
        shape: Some(shape),
        color: Some(color),
        size: None,
        position: None,
    }
    .phrase()
}

/// Which attributes of a single object a caption mentions: colour and shape mostly, sometimes
/// only one of them (which teaches the encoders each attribute on its own).
fn object_claim(o: &Object, p_size: f64, p_position: f64, rng: &mut impl Rng) -> ObjectClaim {
    let (color, shape) = match rng.random_range(0..20) {
        0..=2 => (None, Some(o.shape)), // "a circle": 15%
        3..=4 => (Some(o.color), None), // "an orange shape": 10%
        _ => (Some(o.color), Some(o.shape)),
    };
    ObjectClaim {
        shape,
        color,
        size: rng.random_bool(p_size).then_some(o.size),
        position: rng.random_bool(p_position).then_some(o.position),
    }
}

/// A random claim about `scene` from several templates.
pub fn claim(scene: &Scene, rng: &mut impl Rng) -> Claim {
    match scene.objects.as_slice() {
        [o] => Claim {
            objects: vec![object_claim(o, 0.35, 0.35, rng)],
            relation: None,
            background: rng.random_bool(0.25).then_some(scene.background),
        },
        [a, b] => {
            let (ca, cb) = (
                object_claim(a, 0.2, 0.0, rng),
                object_claim(b, 0.2, 0.0, rng),
            );
            let relation = match rng.random_range(0..10) {
                0 => None,
                1 => Some(Relation::NextTo),
                _ => Some(relation_of(a, b)),
            };
            Claim {
                objects: vec![ca, cb],
                relation,
                background: rng.random_bool(0.15).then_some(scene.background),
            }
        }
        _ => Claim {
            objects: Vec::new(),
            relation: None,
            background: None,
        },
    }
}

/// A random caption for `scene` (the text of a random [`claim`]).
pub fn caption(scene: &Scene, rng: &mut impl Rng) -> String {
    claim(scene, rng).text()
}

/// Reads a prompt back into a [`Claim`]: "a small red circle above a blue square on a black
/// background". Words it does not know are ignored; `None` when no object is named (no colour
/// or shape word), so free text can still be generated, just not checked.
pub fn parse_claim(text: &str) -> Option<Claim> {
    let mut text = format!(" {} ", text.to_lowercase().replace(['.', ','], " "));
    let mut background = None;
    for bg in Background::ALL {
        let phrase = format!(" on a {} background ", bg.word());
        if text.contains(&phrase) {
            background = Some(*bg);
            text = text.replace(&phrase, " ");
        }
    }
    let splits: [(&str, Option<Relation>); 6] = [
        (" above ", Some(Relation::Above)),
        (" below ", Some(Relation::Below)),
        (" left of ", Some(Relation::LeftOf)),
        (" right of ", Some(Relation::RightOf)),
        (" next to ", Some(Relation::NextTo)),
        (" and ", None),
    ];
    let (parts, relation) = splits
        .iter()
        .find_map(|(word, rel)| {
            text.split_once(word)
                .map(|(a, b)| (vec![a.to_string(), b.to_string()], *rel))
        })
        .unwrap_or_else(|| (vec![text.clone()], None));
    let objects: Vec<ObjectClaim> = parts.iter().map(|p| parse_object(p)).collect();
    if objects
        .iter()
        .any(|o| o.color.is_none() && o.shape.is_none())
    {
        return None;
    }
    Some(Claim {
        objects,
        relation,
        background,
    })
}

/// The colour, shape, size and position words of one object phrase.
fn parse_object(phrase: &str) -> ObjectClaim {
    let mut phrase = format!(" {} ", phrase.trim());
    // Positions first (longest first, so "top left" wins over "top" and "left").
    let mut positions: Vec<Position> = Position::ALL.to_vec();
    positions.sort_by_key(|p| std::cmp::Reverse(p.word().len()));
    let mut position = None;
    for p in positions {
        let phrase_words = format!(" {} ", p.phrase());
        if phrase.contains(&phrase_words) {
            position = Some(p);
            phrase = phrase.replace(&phrase_words, " ");
            break;
        }
    }
    let words: Vec<&str> = phrase.split_whitespace().collect();
    let find = |all: &[&'static str]| words.iter().find_map(|w| all.iter().position(|a| a == w));
    ObjectClaim {
        color: find(&Color::ALL.iter().map(|c| c.word()).collect::<Vec<_>>())
            .map(|i| Color::ALL[i]),
        shape: find(&Shape::ALL.iter().map(|s| s.word()).collect::<Vec<_>>())
            .map(|i| Shape::ALL[i]),
        size: find(&Size::ALL.iter().map(|s| s.word()).collect::<Vec<_>>()).map(|i| Size::ALL[i]),
        position,
    }
}
