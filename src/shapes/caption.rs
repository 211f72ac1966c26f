//! Captions the way people write them: always the shape, usually the colour, sometimes the size,
//! the position or the background; for two objects, their relation read off the placement.

use rand::Rng;

use super::scene::{Object, Relation, Scene};

/// "a" or "an" before a word.
fn article(next: &str) -> &'static str {
    if next.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// "a red circle", "a large blue star", "an orange square": an object with optional attributes.
pub fn describe(obj: &Object, with_color: bool, with_size: bool) -> String {
    let mut words = Vec::new();
    if with_size {
        words.push(obj.size.word());
    }
    if with_color {
        words.push(obj.color.word());
    }
    words.push(obj.shape.word());
    let phrase = words.join(" ");
    format!("{} {phrase}", article(&phrase))
}

/// The caption used to ask about a (colour, shape) pair: "a red circle", "an orange star".
pub fn pair_prompt(color: super::Color, shape: super::Shape) -> String {
    let phrase = format!("{} {}", color.word(), shape.word());
    format!("{} {phrase}", article(&phrase))
}

/// A random caption for `scene` from several templates.
pub fn caption(scene: &Scene, rng: &mut impl Rng) -> String {
    let background = format!(" on a {} background", scene.background.word());
    match scene.objects.as_slice() {
        [o] => {
            let mut s = describe(o, rng.random_bool(0.9), rng.random_bool(0.35));
            if rng.random_bool(0.35) {
                s.push(' ');
                s.push_str(&o.position.phrase());
            }
            if rng.random_bool(0.25) {
                s.push_str(&background);
            }
            s
        }
        [a, b] => {
            let (da, db) = (
                describe(a, rng.random_bool(0.9), rng.random_bool(0.2)),
                describe(b, rng.random_bool(0.9), rng.random_bool(0.2)),
            );
            let relation = scene.relation().unwrap_or(Relation::NextTo);
            let mut s = match rng.random_range(0..10) {
                0 => format!("{da} and {db}"),
                1 => format!("{da} {} {db}", Relation::NextTo.word()),
                _ => format!("{da} {} {db}", relation.word()),
            };
            if rng.random_bool(0.15) {
                s.push_str(&background);
            }
            s
        }
        _ => String::new(),
    }
}
