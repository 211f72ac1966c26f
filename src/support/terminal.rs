//! Showing a picture right in the terminal: kitty, iTerm2 or sixel graphics where the terminal
//! speaks them, coloured half blocks everywhere else (via the `viuer` crate).

use std::io::IsTerminal;

use image::{DynamicImage, RgbImage};

/// Prints `img` into the terminal, at most `max_cols` character cells wide, when stdout is a
/// terminal. Returns whether anything was printed (nothing when piped or redirected).
pub fn preview(img: &RgbImage, max_cols: u32) -> bool {
    if !std::io::stdout().is_terminal() {
        return false;
    }
    let cols = crossterm::terminal::size()
        .map(|(c, _)| u32::from(c).saturating_sub(2))
        .unwrap_or(80)
        .clamp(20, max_cols.max(20));
    let config = viuer::Config {
        absolute_offset: false,
        width: Some(cols),
        use_kitty: looks_like_kitty(),
        ..viuer::Config::default()
    };
    viuer::print(&DynamicImage::ImageRgb8(img.clone()), &config).is_ok()
}

/// Terminals that speak the kitty graphics protocol announce themselves in the environment. Asking
/// every other terminal (viuer's probe) can leave the terminal's reply echoed on screen, so we
/// only probe where the answer is likely yes. Sixel support is probed with one query.
fn looks_like_kitty() -> bool {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    std::env::var_os("KITTY_WINDOW_ID").is_some()
        || var("TERM").contains("kitty")
        || matches!(var("TERM_PROGRAM").as_str(), "WezTerm" | "ghostty")
}

/// Whether the environment names a terminal that answers graphics queries (kitty, WezTerm,
/// ghostty, iTerm2, foot, mlterm, contour), outside tmux and screen. A terminal that never
/// answers leaves the query's reader blocked on stdin, where it would swallow every key that
/// follows, so everywhere else we do not ask and use half blocks.
pub fn names_graphics_terminal() -> bool {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let term = var("TERM");
    if std::env::var_os("TMUX").is_some() || term.starts_with("screen") || term.starts_with("tmux")
    {
        return false;
    }
    looks_like_kitty()
        || matches!(var("TERM_PROGRAM").as_str(), "iTerm.app")
        || ["foot", "mlterm", "contour"]
            .iter()
            .any(|t| term.contains(t))
}
