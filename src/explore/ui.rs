//! Drawing the explorer: one function per panel, all generic over the terminal backend (the
//! tests draw into ratatui's `TestBackend`).

use image::RgbImage;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Block, Chart, Clear, Dataset, GraphType, Paragraph, Row, Table, Wrap,
};
use ratatui::Frame;
use ratatui_image::Image;

use super::app::{Action, App, Binding, Mode, Status, KEYMAP};
use super::explain;
use super::frames::{NoiseView, ReverseFrames};
use super::images::{ImageCache, ImageKey, Panel, MAX_PREFETCH};
use crate::schedule::{BetaSchedule, NoiseSchedule};

/// The smallest window the layout is made for.
pub const MIN_SIZE: (u16, u16) = (80, 24);

const ACCENT: Color = Color::Cyan;
const DIM: Color = Color::DarkGray;

/// One line of a timeline chart: its name, colour and (x, y) points.
type Series = (String, Color, Vec<(f64, f64)>);

/// Draws the whole screen.
pub fn draw(f: &mut Frame, app: &App, images: &mut ImageCache) {
    let area = f.area();
    if area.width < MIN_SIZE.0 || area.height < MIN_SIZE.1 {
        draw_too_small(f, area);
        return;
    }
    let [header, body, bar] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(10),
        Constraint::Length(2),
    ])
    .areas(area);
    draw_header(f, app, header);
    match app.mode {
        Mode::Reverse => draw_reverse(f, app, images, body),
        Mode::Forward => draw_forward(f, app, images, body),
    }
    draw_bar(f, app, bar);
    if app.help_open {
        draw_help(f, app, area);
    }
    if let Some(buffer) = &app.editing {
        draw_editor(f, buffer, area);
    }
}

fn draw_too_small(f: &mut Frame, area: Rect) {
    let text = format!(
        "inkdrop explore needs a window of at least {}x{}; this one is {}x{}.\nMake the window larger (or the font smaller). q quits.",
        MIN_SIZE.0, MIN_SIZE.1, area.width, area.height
    );
    f.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), area);
}

fn draw_header(f: &mut Frame, app: &App, area: Rect) {
    let s = &app.settings;
    let line = match app.mode {
        Mode::Reverse => Line::from(vec![
            Span::styled(
                " inkdrop explore ",
                Style::new().fg(Color::Black).bg(ACCENT),
            ),
            Span::raw(" "),
            Span::styled(
                format!("\"{}\"", s.prompt),
                Style::new().add_modifier(Modifier::BOLD),
            ),
            Span::raw(format!(
                " {} · {} steps · guidance {} · seed {}",
                s.sampler.name(),
                s.steps,
                s.guidance_scale,
                s.seed
            )),
        ]),
        Mode::Forward => Line::from(vec![
            Span::styled(
                " inkdrop explore ",
                Style::new().fg(Color::Black).bg(ACCENT),
            ),
            Span::raw(" forward process (noising) · "),
            Span::styled(
                app.forward.schedule_kind.name(),
                Style::new().add_modifier(Modifier::BOLD),
            ),
            Span::raw(" schedule"),
        ]),
    };
    f.render_widget(Paragraph::new(line), area);
}

/// Height of a row of square pictures `width` cells wide (half blocks: two pixels per cell
/// vertically, cells about twice as tall as wide), borders included.
fn image_row_height(panel_width: u16) -> u16 {
    panel_width.saturating_sub(2) / 2 + 2
}

/// A bordered panel with a picture fitted inside.
#[expect(clippy::too_many_arguments, reason = "one picture panel's inputs")]
fn picture(
    f: &mut Frame,
    images: &mut ImageCache,
    area: Rect,
    title: Line,
    key: ImageKey,
    source: &dyn Fn(usize) -> Option<RgbImage>,
    prefetch: &[usize],
    focused: bool,
) {
    let border = if focused { ACCENT } else { DIM };
    let block = Block::bordered()
        .border_style(Style::new().fg(border))
        .title(title);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let key = ImageKey {
        size: (inner.width, inner.height),
        ..key
    };
    match images.get(key, source, prefetch) {
        Some(proto) => f.render_widget(Image::new(proto), inner),
        None => f.render_widget(Paragraph::new("…").style(Style::new().fg(DIM)), inner),
    }
}

fn draw_reverse(f: &mut Frame, app: &App, images: &mut ImageCache, area: Rect) {
    let Some(r) = &app.reverse else {
        let msg = match &app.status {
            Status::Running { done, total, .. } => format!(
                "Running the pipeline once: text encoder, {total} denoising steps, VAE decoder ... {done}/{total}\nScrubbing afterwards never runs the model again."
            ),
            Status::Failed(e) => format!("The generation failed: {e}"),
            Status::Ready => "No generation yet.".into(),
        };
        f.render_widget(
            Paragraph::new(msg)
                .wrap(Wrap { trim: true })
                .block(Block::bordered()),
            area,
        );
        return;
    };
    let i = app.step.min(r.len().saturating_sub(1));
    // Wide: five pictures in a row and the token list beside them. Tall: two rows of three, the
    // token list in the sixth place. Small: five in a row, the token named in the panel title.
    let (words_h, chart_min) = (4, 7);
    let avail = area.height.saturating_sub(words_h + chart_min);
    let (rows, per_row, tokens_w) = if area.width >= 5 * 20 + 22 {
        (1u16, 5u16, 22u16)
    } else if avail >= 2 * 9 {
        (2, 3, 0)
    } else {
        (1, 5, 0)
    };
    let panel_w = (area.width - tokens_w) / per_row;
    let img_h = image_row_height(panel_w).min(avail / rows).max(4);
    let [pictures, timeline, words] = Layout::vertical([
        Constraint::Length(img_h * rows),
        Constraint::Min(chart_min),
        Constraint::Length(words_h),
    ])
    .areas(area);
    let [pictures, tokens_area] =
        Layout::horizontal([Constraint::Min(10), Constraint::Length(tokens_w)]).areas(pictures);
    let cells: Vec<Rect> = Layout::vertical(vec![Constraint::Length(img_h); rows as usize])
        .split(pictures)
        .iter()
        .flat_map(|row| {
            Layout::horizontal(vec![Constraint::Length(panel_w); per_row as usize])
                .split(*row)
                .to_vec()
        })
        .collect();
    // Neighbouring steps are encoded ahead, so holding an arrow key scrubs smoothly.
    let all: Vec<usize> =
        (i.saturating_sub(MAX_PREFETCH)..(i + MAX_PREFETCH + 1).min(r.len())).collect();
    let key = |panel, variant| ImageKey {
        panel,
        index: i,
        variant,
        generation: app.generation,
        size: (0, 0),
    };
    picture(
        f,
        images,
        cells[0],
        Line::from(format!("x_t  (step {}/{})", i + 1, r.len())),
        key(Panel::XT, 0),
        &|k| r.x_t.get(k).cloned().flatten(),
        &all,
        false,
    );
    picture(
        f,
        images,
        cells[1],
        Line::from("predicted x0"),
        key(Panel::PredX0, 0),
        &|k| r.pred_x0.get(k).cloned().flatten(),
        &all,
        false,
    );
    let view = NoiseView::ALL
        .iter()
        .position(|&v| v == app.noise_view)
        .unwrap_or(0);
    let (noise_images, range) = &r.noise[view];
    let noise_title = if r.trace.steps[i].eps_uncond.is_none() && view >= 2 {
        format!("{} (no guidance)", app.noise_view.label())
    } else {
        format!("{} ±{range:.2}", app.noise_view.label())
    };
    picture(
        f,
        images,
        cells[2],
        Line::from(noise_title),
        key(Panel::Noise, view),
        &|k| noise_images.get(k).cloned(),
        &all,
        true,
    );
    picture(
        f,
        images,
        cells[3],
        Line::from("x_t: 4 channels"),
        key(Panel::Channels, 0),
        &|k| r.channels.get(k).cloned(),
        &all,
        false,
    );
    let token = app.token.min(r.tokens.len().saturating_sub(1));
    let mass = r
        .attention_mass
        .get(i)
        .and_then(|m| m.get(token))
        .copied()
        .unwrap_or(f64::NAN);
    picture(
        f,
        images,
        cells[4],
        Line::from(format!("\"{}\" {:.0}%", r.token_label(token), 100.0 * mass)),
        key(Panel::Attention, token),
        &|k| r.attention.get(k).and_then(|a| a.get(token)).cloned(),
        &all,
        true,
    );
    if rows == 2 && cells.len() > 5 {
        draw_token_list(f, app, r, i, cells[5]);
    }
    if tokens_w > 0 {
        draw_token_list(f, app, r, i, tokens_area);
    }
    draw_reverse_timeline(f, app, r, i, timeline);
    draw_reverse_words(f, app, r, i, words);
}

/// The context's tokens with the share of attention each gets at this step (↑/↓ select).
fn draw_token_list(f: &mut Frame, app: &App, r: &ReverseFrames, i: usize, area: Rect) {
    let shown = (r.eot_index + 2).max(app.token + 1).min(r.tokens.len());
    let masses = r.attention_mass.get(i);
    let lines: Vec<Line> = (0..shown)
        .map(|k| {
            let m = masses.and_then(|m| m.get(k)).copied().unwrap_or(f64::NAN);
            let text = format!("{:>2} {:<9}{:>4.0}%", k, r.token_label(k), 100.0 * m);
            if k == app.token {
                Line::styled(text, Style::new().fg(Color::Black).bg(ACCENT))
            } else {
                Line::raw(text)
            }
        })
        .collect();
    let block = Block::bordered()
        .border_style(Style::new().fg(DIM))
        .title("tokens ↑↓");
    f.render_widget(Paragraph::new(lines).block(block), area);
}

fn snr(alpha_bar: f64) -> f64 {
    alpha_bar / (1.0 - alpha_bar).max(1e-12)
}

/// A chart of `series` (name, colour, points) with a vertical cursor at `x`.
fn timeline_chart<'a>(
    series: &'a [Series],
    cursor: &'a [(f64, f64)],
    x_bounds: [f64; 2],
    y_bounds: [f64; 2],
    x_title: &'a str,
) -> Chart<'a> {
    let mut sets: Vec<Dataset> = series
        .iter()
        .map(|(name, color, pts)| {
            Dataset::default()
                .name(name.as_str())
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(*color))
                .data(pts)
        })
        .collect();
    sets.push(
        Dataset::default()
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(Color::Yellow))
            .data(cursor),
    );
    let label = |v: f64| Span::raw(format!("{v:.0}"));
    Chart::new(sets)
        .x_axis(
            Axis::default()
                .title(x_title)
                .bounds(x_bounds)
                .labels(vec![label(x_bounds[0]), label(x_bounds[1])])
                .style(Style::new().fg(DIM)),
        )
        .y_axis(
            Axis::default()
                .bounds(y_bounds)
                .labels(vec![
                    Span::raw(format!("{:.0}", y_bounds[0])),
                    Span::raw(format!("{:.0}", y_bounds[1])),
                ])
                .style(Style::new().fg(DIM)),
        )
}

fn draw_reverse_timeline(f: &mut Frame, app: &App, r: &ReverseFrames, i: usize, area: Rect) {
    let [chart_area, numbers] =
        Layout::horizontal([Constraint::Min(30), Constraint::Length(30)]).areas(area);
    let n = r.len();
    let series = vec![
        (
            "ᾱ_t (signal)".to_string(),
            ACCENT,
            r.trace
                .steps
                .iter()
                .map(|s| (s.index as f64, s.alpha_bar))
                .collect(),
        ),
        (
            "1−ᾱ_t (noise)".to_string(),
            Color::Magenta,
            r.trace
                .steps
                .iter()
                .map(|s| (s.index as f64, 1.0 - s.alpha_bar))
                .collect(),
        ),
    ];
    let cursor = [(i as f64, 0.0), (i as f64, 1.0)];
    let chart = timeline_chart(
        &series,
        &cursor,
        [0.0, (n.max(2) - 1) as f64],
        [0.0, 1.0],
        "step",
    )
    .block(
        Block::bordered()
            .border_style(Style::new().fg(DIM))
            .title("timeline"),
    );
    f.render_widget(chart, chart_area);
    let s = &r.trace.steps[i];
    let lines = vec![
        Line::from(vec![
            Span::styled("step ", Style::new().fg(DIM)),
            Span::styled(
                format!("{}/{n}", i + 1),
                Style::new().add_modifier(Modifier::BOLD),
            ),
            Span::styled(
                if app.playing { "  ▶ playing" } else { "" },
                Style::new().fg(Color::Green),
            ),
        ]),
        Line::raw(format!("t        {:.0}", s.t)),
        Line::raw(format!("ᾱ_t      {:.4}", s.alpha_bar)),
        Line::raw(format!("σ_t      {:.3}", s.sigma)),
        Line::raw(format!("SNR      {:.3}", snr(s.alpha_bar))),
        Line::raw(format!(
            "|ε̂|      {:.3}",
            crate::pipeline::Trace::rms(&s.eps)
        )),
        Line::raw(format!("step     {:.0} ms", s.seconds * 1e3)),
    ];
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().border_style(Style::new().fg(DIM))),
        numbers,
    );
}

fn draw_reverse_words(f: &mut Frame, app: &App, r: &ReverseFrames, i: usize, area: Rect) {
    let s = &r.trace.steps[i];
    let next = r.trace.steps.get(i + 1).map(|n| n.alpha_bar);
    let before = i
        .checked_sub(1)
        .and_then(|k| r.trace.steps.get(k))
        .map(|b| b.alpha_bar);
    let prev = explain::alpha_bar_prev(r.trace.sampler, next);
    let text = vec![
        Line::raw(explain::phase(s.alpha_bar)),
        Line::styled(
            explain::update(r.trace.sampler, s.alpha_bar, prev, before),
            Style::new().fg(Color::Yellow),
        ),
    ];
    let _ = app;
    f.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), area);
}

fn draw_forward(f: &mut Frame, app: &App, images: &mut ImageCache, area: Rect) {
    let fw = &app.forward;
    let t = app.t.min(fw.num_timesteps() - 1);
    let avail = area.height.saturating_sub(4 + 7);
    let panel_w = (area.width / 3).min(2 * avail.saturating_sub(2) + 2);
    let img_h = image_row_height(panel_w).min(avail).max(4);
    let [pictures, timeline, words] = Layout::vertical([
        Constraint::Length(img_h),
        Constraint::Min(7),
        Constraint::Length(4),
    ])
    .areas(area);
    let cells = Layout::horizontal(vec![Constraint::Length(panel_w); 3]).split(pictures);
    let schedule = BetaSchedule::ALL
        .iter()
        .position(|&k| k == fw.schedule_kind)
        .unwrap_or(0);
    let key = |panel| ImageKey {
        panel,
        index: t,
        variant: schedule,
        generation: 0,
        size: (0, 0),
    };
    let near: Vec<usize> = (1..=3)
        .flat_map(|k| {
            [
                t.saturating_sub(k * 10),
                (t + k * 10).min(fw.num_timesteps() - 1),
            ]
        })
        .collect();
    picture(
        f,
        images,
        cells[0],
        Line::from("x0 (clean)"),
        key(Panel::ForwardX0),
        &|_| Some(fw.x0.clone()),
        &[],
        false,
    );
    picture(
        f,
        images,
        cells[1],
        Line::from(format!("x_t  (t = {t})")),
        key(Panel::ForwardXT),
        &|k| fw.x_t(k).ok(),
        &near,
        true,
    );
    picture(
        f,
        images,
        cells[2],
        Line::from("noise added √(1−ᾱ_t)·ε"),
        key(Panel::ForwardNoise),
        &|k| fw.noise_added(k).ok(),
        &near,
        false,
    );
    let [chart_area, numbers] =
        Layout::horizontal([Constraint::Min(30), Constraint::Length(30)]).areas(timeline);
    let total = fw.num_timesteps();
    let series: Vec<Series> = BetaSchedule::ALL
        .iter()
        .map(|&kind| {
            let s = NoiseSchedule::for_schedule(kind);
            let color = if kind == fw.schedule_kind {
                ACCENT
            } else {
                DIM
            };
            let pts = (0..total)
                .step_by(5)
                .map(|t| (t as f64, s.alpha_bar(t)))
                .collect();
            (format!("ᾱ_t {}", kind.name()), color, pts)
        })
        .collect();
    let cursor = [(t as f64, 0.0), (t as f64, 1.0)];
    let chart = timeline_chart(&series, &cursor, [0.0, (total - 1) as f64], [0.0, 1.0], "t").block(
        Block::bordered()
            .border_style(Style::new().fg(DIM))
            .title("ᾱ_t of each schedule (b switches)"),
    );
    f.render_widget(chart, chart_area);
    let s = &fw.schedule;
    let ab = s.alpha_bar(t);
    let lines = vec![
        Line::from(vec![
            Span::styled("t ", Style::new().fg(DIM)),
            Span::styled(
                format!("{t}/{}", total - 1),
                Style::new().add_modifier(Modifier::BOLD),
            ),
            Span::styled(
                if app.playing { "  ▶ playing" } else { "" },
                Style::new().fg(Color::Green),
            ),
        ]),
        Line::raw(format!("β_t       {:.5}", s.betas[t])),
        Line::raw(format!("ᾱ_t       {ab:.4}")),
        Line::raw(format!("√ᾱ_t      {:.3}", ab.sqrt())),
        Line::raw(format!("√(1−ᾱ_t)  {:.3}", (1.0 - ab).sqrt())),
        Line::raw(format!("SNR       {:.3}", snr(ab))),
    ];
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().border_style(Style::new().fg(DIM))),
        numbers,
    );
    let text = vec![
        Line::styled(
            format!(
                "x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε = {:.3}·x0 + {:.3}·ε  (one jump from x0)",
                ab.sqrt(),
                (1.0 - ab).sqrt()
            ),
            Style::new().fg(Color::Yellow),
        ),
        Line::raw(forward_phase(ab)),
    ];
    f.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), words);
}

fn forward_phase(alpha_bar: f64) -> &'static str {
    if alpha_bar > 0.9 {
        "The picture is nearly untouched: the noise is a faint grain."
    } else if alpha_bar > 0.3 {
        "Picture and noise are mixed; the shape is still easy to see, fine detail is going."
    } else if alpha_bar > 0.02 {
        "Mostly noise: only the broad layout and colour survive."
    } else {
        "Practically pure noise: this is where generation starts."
    }
}

/// The bottom two lines: status, then the keys (built from the key map).
fn draw_bar(f: &mut Frame, app: &App, area: Rect) {
    let [status_area, keys_area] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(area);
    let status = match (&app.status, &app.message) {
        (_, Some(m)) => Span::styled(m.clone(), Style::new().fg(Color::Green)),
        (Status::Running { done, total, .. }, None) => Span::styled(
            format!("generating… step {done}/{total} (the shown picture stays until it is done)"),
            Style::new().fg(Color::Yellow),
        ),
        (Status::Failed(e), None) => Span::styled(e.clone(), Style::new().fg(Color::Red)),
        (Status::Ready, None) => match app.mode {
            Mode::Reverse => {
                let (done, n) = app
                    .reverse
                    .as_ref()
                    .map_or((0, 0), |r| (r.pictures_done(), r.len()));
                let text = if done < n {
                    format!(
                        "trace ready in {:.1} s; VAE-decoding the pictures of each step, nearest the cursor first: {done}/{n}",
                        app.ready_seconds
                    )
                } else {
                    format!(
                        "trace ready in {:.1} s: every step's x_t, noise predictions and attention are kept; scrubbing never re-runs the model",
                        app.ready_seconds
                    )
                };
                Span::styled(text, Style::new().fg(DIM))
            }
            Mode::Forward => Span::styled(
                "the same picture and the same noise ε at every t; only the mix changes",
                Style::new().fg(DIM),
            ),
        },
    };
    f.render_widget(Paragraph::new(Line::from(status)), status_area);
    let listed: Vec<_> = KEYMAP
        .iter()
        .filter(|b| b.applies(app.mode) && b.bar.is_some())
        .collect();
    let used = |b: &Binding| b.label.chars().count() + b.bar.map_or(0, |w| w.chars().count()) + 3;
    // Help and quit always show: the other keys fill what width is left, in key-map order.
    let essential = |b: &Binding| matches!(b.action, Action::Help | Action::Quit);
    let mut width: usize = listed
        .iter()
        .filter(|b| essential(b))
        .map(|b| used(b))
        .sum();
    let mut shown = Vec::new();
    for b in &listed {
        if essential(b) {
            shown.push(*b);
        } else if width + used(b) <= area.width as usize {
            width += used(b);
            shown.push(*b);
        }
    }
    let mut spans = Vec::new();
    for b in shown {
        spans.push(Span::styled(
            format!(" {} ", b.label),
            Style::new().fg(Color::Black).bg(DIM),
        ));
        spans.push(Span::raw(format!("{} ", b.bar.unwrap_or_default())));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), keys_area);
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

/// `?`: every key of the key map for this mode.
fn draw_help(f: &mut Frame, app: &App, area: Rect) {
    let rows: Vec<Row> = KEYMAP
        .iter()
        .filter(|b| b.applies(app.mode))
        .map(|b| Row::new(vec![b.label.to_string(), b.help.to_string()]))
        .collect();
    let h = rows.len() as u16 + 2;
    let popup = centered(area, 76, h);
    f.render_widget(Clear, popup);
    let table = Table::new(rows, [Constraint::Length(10), Constraint::Min(20)]).block(
        Block::bordered()
            .border_style(Style::new().fg(ACCENT))
            .title(" keys (any key closes) "),
    );
    f.render_widget(table, popup);
}

fn draw_editor(f: &mut Frame, buffer: &str, area: Rect) {
    let popup = centered(area, 70, 3);
    f.render_widget(Clear, popup);
    let p = Paragraph::new(format!("{buffer}▏")).block(
        Block::bordered()
            .border_style(Style::new().fg(ACCENT))
            .title(" prompt (Enter runs, Esc cancels) "),
    );
    f.render_widget(p, popup);
}
