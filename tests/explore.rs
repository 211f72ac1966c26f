//! `inkdrop explore`: state transitions (pure, no terminal), whole screens drawn into ratatui's
//! `TestBackend` and compared with insta snapshots, and the picture the `w` key writes.
//! Run with `cargo insta review` (or `INSTA_UPDATE=always`) after a deliberate change to the
//! screens or a retrained model.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use image::RgbImage;
use inkdrop::explore::app::{action_for, Action, App, Effect, Mode, Settings, Status, KEYMAP};
use inkdrop::explore::frames::{ForwardFrames, NoiseView, StepLatents};
use inkdrop::explore::images::ImageCache;
use inkdrop::explore::{generate_frames, panels_picture, ui};
use inkdrop::pipeline::TextToImage;
use inkdrop::schedule::BetaSchedule;
use inkdrop::schedulers::SamplerKind;
use inkdrop::shapes::{render, sample_at, WorldConfig};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use ratatui_image::picker::Picker;

fn settings(steps: usize) -> Settings {
    Settings {
        prompt: "a red circle above a blue square".into(),
        sampler: SamplerKind::Ddim,
        steps,
        guidance_scale: 7.5,
        seed: 0,
    }
}

fn forward() -> ForwardFrames {
    let x0: RgbImage = render(&sample_at(&WorldConfig::default(), 7, 0).scene, 32);
    ForwardFrames::new(x0, BetaSchedule::ScaledLinear, 0)
}

/// An app with a finished generation of `steps` steps (timings zeroed so screens are stable).
fn ready_app(steps: usize) -> App {
    let pipe = TextToImage::load_default().expect("shipped models in data/");
    let mut app = App::new(settings(steps), forward(), Mode::Reverse);
    let id = app.start_generation();
    let mut progress = Vec::new();
    let (mut frames, _) = generate_frames(&pipe, &app.settings, &mut |d, t| progress.push((d, t)))
        .expect("generation runs");
    assert_eq!(
        progress.last(),
        Some(&(steps, steps)),
        "progress reports every step"
    );
    for s in &mut frames.trace.steps {
        s.seconds = 0.0;
    }
    frames.decode_all(&pipe).expect("every step decodes");
    app.on_generated(id, Ok((frames, 0.0)));
    app
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn screen(app: &App, w: u16, h: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    let mut images = ImageCache::inline(Picker::halfblocks());
    terminal.draw(|f| ui::draw(f, app, &mut images)).unwrap();
    terminal.backend().to_string()
}

#[test]
fn every_action_has_a_key_and_the_bar_lists_help_and_quit() {
    use Action::*;
    for action in [
        StepBack,
        StepForward,
        BackTen,
        ForwardTen,
        First,
        Last,
        PlayPause,
        TokenUp,
        TokenDown,
        CycleNoise,
        EditPrompt,
        CycleSampler,
        GuidanceUp,
        GuidanceDown,
        NewSeed,
        CycleSchedule,
        ToggleMode,
        WritePng,
        Help,
        Quit,
    ] {
        assert!(
            KEYMAP.iter().any(|b| b.action == action),
            "{action:?} has no key"
        );
    }
    // No key does two things in one mode.
    for mode in [Mode::Reverse, Mode::Forward] {
        let mut seen = std::collections::HashSet::new();
        for b in KEYMAP.iter().filter(|b| b.applies(mode)) {
            for k in b.keys {
                assert!(seen.insert(*k), "{k:?} bound twice in {mode:?}");
            }
        }
    }
    assert_eq!(
        action_for(Mode::Reverse, &key(KeyCode::Char('?'))),
        Some(Help)
    );
    // Shift arrives with '?' on most keyboards; it must still be help.
    let shifted = KeyEvent::new(KeyCode::Char('?'), KeyModifiers::SHIFT);
    assert_eq!(action_for(Mode::Reverse, &shifted), Some(Help));
    let shift_right = KeyEvent::new(KeyCode::Right, KeyModifiers::SHIFT);
    assert_eq!(action_for(Mode::Reverse, &shift_right), Some(ForwardTen));
    assert_eq!(action_for(Mode::Forward, &key(KeyCode::Tab)), None);
    assert_eq!(action_for(Mode::Reverse, &key(KeyCode::Char('b'))), None);
}

#[test]
fn keys_move_the_cursor_within_bounds_and_ask_for_reruns() {
    let mut app = App::new(settings(30), forward(), Mode::Forward);
    // Forward mode: arrows move FORWARD_STRIDE timesteps, clamped to 0..=999.
    assert_eq!(app.handle_key(key(KeyCode::Left)), Effect::None);
    assert_eq!(app.t, 0);
    app.handle_key(key(KeyCode::Right));
    assert_eq!(app.t, inkdrop::explore::app::FORWARD_STRIDE);
    app.handle_key(key(KeyCode::PageDown));
    assert_eq!(app.t, 11 * inkdrop::explore::app::FORWARD_STRIDE);
    app.handle_key(key(KeyCode::End));
    assert_eq!(app.t, 999);
    app.handle_key(key(KeyCode::Right));
    assert_eq!(app.t, 999);
    app.handle_key(key(KeyCode::Home));
    assert_eq!(app.t, 0);
    app.handle_key(key(KeyCode::Char('b')));
    assert_eq!(app.forward.schedule_kind, BetaSchedule::SquaredcosCapV2);
    // Re-running settings.
    app.handle_key(key(KeyCode::Char('f')));
    assert_eq!(app.mode, Mode::Reverse);
    assert_eq!(app.handle_key(key(KeyCode::Char('s'))), Effect::Generate);
    assert_eq!(app.settings.sampler, SamplerKind::Euler);
    assert_eq!(app.handle_key(key(KeyCode::Char('+'))), Effect::Generate);
    assert_eq!(app.settings.guidance_scale, 8.0);
    app.settings.guidance_scale = 0.0;
    assert_eq!(
        app.handle_key(key(KeyCode::Char('-'))),
        Effect::None,
        "clamped at 0"
    );
    assert_eq!(app.handle_key(key(KeyCode::Char('n'))), Effect::Generate);
    assert_eq!(app.settings.seed, 1);
    assert_eq!(app.handle_key(key(KeyCode::Char('w'))), Effect::WritePng);
    assert_eq!(app.handle_key(key(KeyCode::Char('q'))), Effect::Quit);
    let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
    assert_eq!(app.handle_key(ctrl_c), Effect::Quit);
}

#[test]
fn the_prompt_editor_and_help_take_keys_first() {
    let mut app = App::new(settings(30), forward(), Mode::Reverse);
    app.handle_key(key(KeyCode::Char('e')));
    assert_eq!(
        app.editing.as_deref(),
        Some("a red circle above a blue square")
    );
    // While editing, 'q' is a letter, not quit.
    for _ in 0.."a blue square".len() {
        app.handle_key(key(KeyCode::Backspace));
    }
    for c in "a green star".chars() {
        assert_eq!(app.handle_key(key(KeyCode::Char(c))), Effect::None);
    }
    assert_eq!(app.handle_key(key(KeyCode::Char('q'))), Effect::None);
    app.handle_key(key(KeyCode::Backspace));
    assert_eq!(app.handle_key(key(KeyCode::Enter)), Effect::Generate);
    assert_eq!(app.settings.prompt, "a red circle above a green star");
    // Esc cancels without re-running.
    app.handle_key(key(KeyCode::Char('e')));
    app.handle_key(key(KeyCode::Char('x')));
    assert_eq!(app.handle_key(key(KeyCode::Esc)), Effect::None);
    assert_eq!(app.settings.prompt, "a red circle above a green star");
    // Help: any key closes it; q still quits, Esc only closes.
    app.handle_key(key(KeyCode::Char('?')));
    assert!(app.help_open);
    assert_eq!(app.handle_key(key(KeyCode::Right)), Effect::None);
    assert!(!app.help_open);
    app.handle_key(key(KeyCode::Char('?')));
    assert_eq!(app.handle_key(key(KeyCode::Esc)), Effect::None);
    app.handle_key(key(KeyCode::Char('?')));
    assert_eq!(app.handle_key(key(KeyCode::Char('q'))), Effect::Quit);
}

#[test]
fn stale_generations_are_dropped_and_failures_are_shown() {
    let mut app = App::new(settings(30), forward(), Mode::Reverse);
    let first = app.start_generation();
    let second = app.start_generation();
    app.on_progress(first, 5, 30);
    assert_eq!(
        app.status,
        Status::Running {
            id: second,
            done: 0,
            total: 30
        },
        "progress of a superseded run is ignored"
    );
    app.on_generated(first, Err("old".into()));
    assert!(matches!(app.status, Status::Running { .. }));
    app.on_generated(second, Err("the UNet file is missing".into()));
    assert_eq!(
        app.status,
        Status::Failed("the UNet file is missing".into())
    );
    assert!(screen(&app, 80, 24).contains("the UNet file is missing"));
}

#[test]
fn pictures_arrive_after_the_trace_nearest_the_cursor_first() {
    let pipe = TextToImage::load_default().expect("shipped models in data/");
    let mut app = App::new(settings(6), forward(), Mode::Reverse);
    let id = app.start_generation();
    let (frames, _) = generate_frames(&pipe, &app.settings, &mut |_, _| {}).unwrap();
    let latents = StepLatents::of(&frames.trace).unwrap();
    assert_eq!(latents.len(), 6);
    assert_eq!(
        frames.pictures_done(),
        0,
        "the trace comes before its pictures"
    );
    assert!(frames.attention.iter().all(Vec::is_empty));
    app.on_generated(id, Ok((frames, 0.0)));
    let waiting = screen(&app, 120, 30);
    assert!(
        waiting.contains("VAE-decoding the pictures of each step") && waiting.contains("0/6"),
        "{waiting}"
    );
    assert!(
        panels_picture(&app).is_err(),
        "w before the pictures exist is refused, not a panic"
    );

    // Decoding order: the cursor's step, then outwards (the later neighbour first).
    let mut done = vec![false; 6];
    let mut order = Vec::new();
    while let Some(i) = StepLatents::nearest_missing(&done, 2) {
        done[i] = true;
        order.push(i);
    }
    assert_eq!(order, [2, 3, 1, 4, 0, 5]);

    let (x_t, x0) = latents.decode(&pipe, 2).unwrap();
    app.on_pictures(id + 1, 2, x_t.clone(), x0.clone());
    assert_eq!(
        app.reverse.as_ref().unwrap().pictures_done(),
        0,
        "stale pictures are dropped"
    );
    app.on_pictures(id, 2, x_t.clone(), x0.clone());
    let r = app.reverse.as_ref().unwrap();
    assert_eq!(r.pictures_done(), 1);
    assert_eq!(
        r.attention[2].len(),
        r.tokens.len(),
        "maps laid over the arrived x0"
    );
    assert!(r.attention[1].is_empty());
    assert!(
        latents.decode(&pipe, 6).is_err(),
        "a step past the end is an error"
    );

    // Step by step or all at once: the same pictures.
    let (mut eager, _) = generate_frames(&pipe, &app.settings, &mut |_, _| {}).unwrap();
    eager.decode_all(&pipe).unwrap();
    assert_eq!(eager.pictures_done(), 6);
    assert_eq!(eager.x_t[2].as_ref(), Some(&x_t));
    assert_eq!(eager.pred_x0[2].as_ref(), Some(&x0));
    assert_eq!(eager.attention[2], r.attention[2]);
}

#[test]
fn reverse_mode_scrubs_plays_and_selects_tokens() {
    let mut app = ready_app(10);
    let r = app.reverse.as_ref().unwrap();
    assert_eq!(r.len(), 10);
    assert_eq!(r.x_t.len(), 10);
    assert_eq!(
        r.attention[0].len(),
        r.tokens.len(),
        "a map per token per step"
    );
    assert_eq!(r.token_label(0), "<start>");
    assert_eq!(r.token_label(2), "red");
    assert_eq!(r.token_label(r.eot_index), "<end>");
    // The attention shares of one step sum to one over the tokens.
    let total: f64 = r.attention_mass[3].iter().sum();
    assert!(
        (total - 1.0).abs() < 1e-3,
        "attention shares sum to {total}"
    );
    app.handle_key(key(KeyCode::End));
    assert_eq!(app.step, 9);
    app.handle_key(key(KeyCode::PageUp));
    assert_eq!(app.step, 0);
    app.handle_key(key(KeyCode::Char(' ')));
    assert!(app.playing);
    for _ in 0..20 {
        app.tick();
    }
    assert_eq!(app.step, 9);
    assert!(!app.playing, "playback stops at the last step");
    app.handle_key(key(KeyCode::Char(' ')));
    assert_eq!(app.step, 0, "play from the end starts over");
    app.handle_key(key(KeyCode::Up));
    app.handle_key(key(KeyCode::Up));
    assert_eq!(app.token, 0);
    for _ in 0..40 {
        app.handle_key(key(KeyCode::Down));
    }
    assert_eq!(app.token, app.reverse.as_ref().unwrap().tokens.len() - 1);
    app.handle_key(key(KeyCode::Tab));
    assert_eq!(app.noise_view, NoiseView::Cond);
}

#[test]
fn screens_match_their_snapshots() {
    let mut app = ready_app(10);
    app.step = 6;
    app.token = 2; // "red"
    let small = screen(&app, 80, 24);
    let bar = small
        .lines()
        .rev()
        .find(|l| !l.trim_matches(['"', ' ']).is_empty());
    assert!(
        bar.is_some_and(|l| l.contains("help") && l.contains("quit")),
        "the key bar at 80x24 must show help and quit: {bar:?}"
    );
    insta::assert_snapshot!("reverse_80x24", small);
    insta::assert_snapshot!("reverse_140x40", screen(&app, 140, 40));
    app.help_open = true;
    insta::assert_snapshot!("reverse_help_80x24", screen(&app, 80, 24));
    app.help_open = false;
    app.mode = Mode::Forward;
    app.t = 300;
    insta::assert_snapshot!("forward_80x24", screen(&app, 80, 24));
    insta::assert_snapshot!("too_small_60x20", screen(&app, 60, 20));
}

#[test]
fn stepping_changes_the_screen_and_the_written_picture() {
    let mut app = ready_app(10);
    let before = screen(&app, 100, 30);
    app.handle_key(key(KeyCode::Right));
    let after = screen(&app, 100, 30);
    assert_ne!(before, after);
    assert!(after.contains("step 2/10"));
    let a = panels_picture(&app).unwrap();
    app.handle_key(key(KeyCode::End));
    let b = panels_picture(&app).unwrap();
    assert_eq!(a.dimensions(), b.dimensions());
    assert_ne!(a.as_raw(), b.as_raw());
    app.mode = Mode::Forward;
    app.t = 500;
    let c = panels_picture(&app).unwrap();
    assert!(c.width() > 3 * 256);
}
