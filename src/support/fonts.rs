//! The bundled font (DejaVu Sans, `data/fonts/`, free licence in `data/fonts/LICENSE_DEJAVU`),
//! registered with plotters so figures render the same on every machine with no system fonts.

use std::sync::Once;

/// The font family name figures use.
pub const FAMILY: &str = "sans-serif";

static DEJAVU_SANS: &[u8] = include_bytes!("../../data/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// Registers the bundled font with plotters (idempotent; call before drawing text).
pub fn register() {
    REGISTER.call_once(|| {
        for style in [
            plotters::style::FontStyle::Normal,
            plotters::style::FontStyle::Bold,
        ] {
            // The font is compiled in; `tests/support.rs` checks that it parses and draws text.
            let _ = plotters::style::register_font(FAMILY, style, DEJAVU_SANS);
        }
    });
}
