//! The vocabulary of Shapes World and how scenes are drawn at random.

use rand::seq::IndexedRandom;
use rand::Rng;
use serde::Serialize;

use super::{is_held_out, Split, WorldConfig};

macro_rules! vocabulary {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $word:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in a fixed order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The word (or words) captions use.
            pub fn word(self) -> &'static str {
                match self { $($name::$variant => $word),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.word())
            }
        }
    };
}

vocabulary!(
    /// The four shapes.
    Shape { Circle => "circle", Square => "square", Triangle => "triangle", Star => "star" }
);
vocabulary!(
    /// The seven object colours.
    Color {
        Red => "red", Orange => "orange", Yellow => "yellow", Green => "green",
        Blue => "blue", Purple => "purple", White => "white",
    }
);
vocabulary!(
    /// Small (about a third of the canvas across) or large (about half).
    Size { Small => "small", Large => "large" }
);
vocabulary!(
    /// The three background colours.
    Background { Black => "black", Gray => "gray", White => "white" }
);
vocabulary!(
    /// The nine cells of the 3x3 placement grid.
    Position {
        TopLeft => "top left", Top => "top", TopRight => "top right",
        Left => "left", Center => "center", Right => "right",
        BottomLeft => "bottom left", Bottom => "bottom", BottomRight => "bottom right",
    }
);
vocabulary!(
    /// How the first object of a two-object scene sits relative to the second.
    Relation {
        Above => "above", Below => "below", LeftOf => "left of", RightOf => "right of",
        NextTo => "next to",
    }
);

impl Color {
    /// sRGB of the colour.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [220, 50, 50],
            Color::Orange => [245, 145, 30],
            Color::Yellow => [240, 220, 50],
            Color::Green => [50, 180, 75],
            Color::Blue => [50, 100, 230],
            Color::Purple => [150, 70, 200],
            Color::White => [240, 240, 240],
        }
    }
}

impl Background {
    /// sRGB of the background.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Background::Black => [20, 20, 20],
            Background::Gray => [120, 120, 120],
            Background::White => [235, 235, 235],
        }
    }

    /// The object colour that would vanish on this background, if any.
    pub fn clashing_color(self) -> Option<Color> {
        match self {
            Background::White => Some(Color::White),
            Background::Black | Background::Gray => None,
        }
    }
}

impl Size {
    /// Diameter of the shape's circumscribed circle as a fraction of the canvas side.
    pub fn diameter(self) -> f32 {
        match self {
            Size::Small => 0.32,
            Size::Large => 0.48,
        }
    }
}

impl Position {
    /// (column, row) in the grid, each 0..3.
    pub fn cell(self) -> (usize, usize) {
        let i = Position::ALL.iter().position(|&p| p == self).unwrap_or(4);
        (i % 3, i / 3)
    }

    /// The cell's centre in canvas units [0, 1] (x to the right, y down).
    pub fn center(self) -> (f32, f32) {
        let (c, r) = self.cell();
        ((c as f32 + 0.5) / 3.0, (r as f32 + 0.5) / 3.0)
    }

    /// The phrase captions use: "at the top left", "in the center".
    pub fn phrase(self) -> String {
        match self {
            Position::Center => "in the center".into(),
            p => format!("at the {}", p.word()),
        }
    }
}

/// One object with its exact placement.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Object {
    pub shape: Shape,
    pub color: Color,
    pub size: Size,
    pub position: Position,
    /// Centre in canvas units, x right and y down, both in [0, 1].
    pub center: [f32; 2],
    /// Rotation in radians (small jitter; squares and stars are not all axis-aligned).
    pub rotation: f32,
    /// Tight bounding box [x_min, y_min, x_max, y_max] of the drawn shape, canvas units.
    pub bbox: [f32; 4],
}

impl Object {
    /// Radius of the circumscribed circle in canvas units.
    pub fn radius(&self) -> f32 {
        self.size.diameter() / 2.0
    }
}

/// A whole picture's ground truth.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scene {
    pub background: Background,
    pub objects: Vec<Object>,
}

impl Scene {
    /// The relation of object 0 to object 1 read off their centres ("above" when the first is
    /// clearly higher, and so on), or `None` for single-object scenes.
    pub fn relation(&self) -> Option<Relation> {
        match self.objects.as_slice() {
            [a, b] => Some(super::caption::relation_of(a, b)),
            _ => None,
        }
    }
}

/// Draws a scene: background, one or two objects, no clashing colours, no overlaps, and no
/// held-out pair in the training split.
pub fn sample_scene(config: &WorldConfig, rng: &mut impl Rng) -> Scene {
    let background = *Background::ALL.choose(rng).unwrap_or(&Background::Gray);
    let n = if rng.random_bool(config.p_two_objects.clamp(0.0, 1.0)) {
        2
    } else {
        1
    };
    loop {
        let mut objects: Vec<Object> = Vec::with_capacity(n);
        let mut used = Vec::new();
        for _ in 0..n {
            let (color, shape) = draw_pair(background, config.split, rng);
            let size = *Size::ALL.choose(rng).unwrap_or(&Size::Small);
            let position = *Position::ALL.choose(rng).unwrap_or(&Position::Center);
            if used.contains(&position) {
                break;
            }
            used.push(position);
            objects.push(place(shape, color, size, position, rng));
        }
        let disjoint = match objects.as_slice() {
            [a, b] => {
                let d = ((a.center[0] - b.center[0]).powi(2) + (a.center[1] - b.center[1]).powi(2))
                    .sqrt();
                d > a.radius() + b.radius() + 0.03
            }
            _ => true,
        };
        if objects.len() == n && disjoint {
            return Scene {
                background,
                objects,
            };
        }
    }
}

fn draw_pair(background: Background, split: Split, rng: &mut impl Rng) -> (Color, Shape) {
    loop {
        let color = *Color::ALL.choose(rng).unwrap_or(&Color::Red);
        let shape = *Shape::ALL.choose(rng).unwrap_or(&Shape::Circle);
        let clash = background.clashing_color() == Some(color);
        let excluded = split == Split::Train && is_held_out(color, shape);
        if !clash && !excluded {
            return (color, shape);
        }
    }
}

/// Places an object in its grid cell with jitter, kept fully inside the canvas.
pub fn place(
    shape: Shape,
    color: Color,
    size: Size,
    position: Position,
    rng: &mut impl Rng,
) -> Object {
    let r = size.diameter() / 2.0;
    let (cx, cy) = position.center();
    let jitter = 0.06;
    let lo = r + 0.01;
    let hi = 1.0 - r - 0.01;
    let cx = (cx + rng.random_range(-jitter..=jitter)).clamp(lo, hi);
    let cy = (cy + rng.random_range(-jitter..=jitter)).clamp(lo, hi);
    let rotation = rng.random_range(-0.25f32..=0.25);
    let mut obj = Object {
        shape,
        color,
        size,
        position,
        center: [cx, cy],
        rotation,
        bbox: [0.0; 4],
    };
    obj.bbox = super::render::bounding_box(&obj);
    obj
}
