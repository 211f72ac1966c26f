//! `inkdrop explore`: the terminal UI. This file owns the terminal (raw mode, alternate screen,
//! restoring it on quit, Ctrl-C and panic), the worker thread that runs the pipeline, and the
//! event loop; the state and drawing live in `inkdrop::explore`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use crossterm::event::{self, Event, KeyEventKind};
use image::RgbImage;
use inkdrop::explore::app::{App, Effect, Mode, Settings};
use inkdrop::explore::frames::{ForwardFrames, ReverseFrames, StepLatents};
use inkdrop::explore::images::ImageCache;
use inkdrop::explore::{generate_frames, panels_file_name, panels_picture, ui};
use inkdrop::pipeline::TextToImage;
use inkdrop::schedule::BetaSchedule;
use inkdrop::schedulers::SamplerKind;
use inkdrop::shapes::{render, sample_at, WorldConfig};
use inkdrop::support::image_io::{load_image, save_png};
use ratatui_image::picker::{Picker, ProtocolType};

#[derive(Debug, Args)]
pub struct ExploreArgs {
    /// The prompt to generate (reverse mode); `e` edits it inside the explorer.
    #[arg(long, default_value = "a red circle above a blue square")]
    pub prompt: String,
    /// Sampler (`s` cycles through them inside the explorer).
    #[arg(long, value_enum, default_value = "ddim")]
    pub sampler: SamplerKind,
    /// Denoising steps.
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Classifier-free guidance scale (`+`/`-` inside the explorer).
    #[arg(long, default_value_t = 7.5)]
    pub guidance_scale: f64,
    /// Seed of the starting noise (`n` moves to the next seed).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Start in forward mode: scrub the noising of a picture (`f` switches modes).
    #[arg(long)]
    pub forward: bool,
    /// Forward mode: the picture to noise [default: a Shapes World sample]; resized to 32x32.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Forward mode: the beta schedule to start with (`b` cycles).
    #[arg(long, value_enum, default_value = "scaled_linear")]
    pub beta_schedule: BetaSchedule,
    /// How pictures reach the terminal: auto asks terminals that announce graphics support
    /// (kitty, WezTerm, ghostty, iTerm2, foot, mlterm, contour; never inside tmux or screen)
    /// which protocol they speak, and uses half blocks, which work everywhere, elsewhere.
    #[arg(long, value_enum, default_value = "auto")]
    pub graphics: Graphics,
    /// Folder for the PNGs `w` writes [default: target/inkdrop/explore].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Picture protocol choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Graphics {
    Auto,
    Halfblocks,
    Kitty,
    Sixel,
    Iterm2,
}

/// Messages from the worker thread.
enum FromWorker {
    Progress(u64, usize, usize),
    Done(u64, Box<Result<(ReverseFrames, f64), String>>),
    /// Generation id, step, decoded x_t and predicted x0.
    Pictures(u64, usize, RgbImage, RgbImage),
}

/// Runs generation requests one after another; a burst of requests (say, `+` pressed five
/// times) runs only the last. After each generation it decodes the steps' pictures, always the
/// one nearest `cursor` next, and drops that work as soon as a new request comes in.
fn spawn_worker(
    pipe: TextToImage,
    tx: Sender<FromWorker>,
    cursor: Arc<AtomicUsize>,
) -> Sender<(u64, Settings)> {
    let (req_tx, req_rx) = channel::<(u64, Settings)>();
    std::thread::spawn(move || {
        let mut next = None;
        while let Some(mut job) = next.take().or_else(|| req_rx.recv().ok()) {
            while let Ok(newer) = req_rx.try_recv() {
                job = newer;
            }
            let (id, settings) = job;
            let progress = tx.clone();
            // A panic here must not take the UI down: it becomes the run's error message.
            let result = catch(|| {
                // On rayon's pool: see `inkdrop::support::on_pool`.
                inkdrop::support::on_pool(|| {
                    generate_frames(&pipe, &settings, &mut |done, total| {
                        let _ = progress.send(FromWorker::Progress(id, done, total));
                    })
                })
                .and_then(|(frames, secs)| Ok((StepLatents::of(&frames.trace)?, frames, secs)))
                .map_err(|e| e.to_string())
            });
            let latents = match result {
                Ok((latents, frames, secs)) => {
                    if tx
                        .send(FromWorker::Done(id, Box::new(Ok((frames, secs)))))
                        .is_err()
                    {
                        break;
                    }
                    latents
                }
                Err(e) => {
                    if tx.send(FromWorker::Done(id, Box::new(Err(e)))).is_err() {
                        break;
                    }
                    continue;
                }
            };
            let mut done = vec![false; latents.len()];
            while let Some(i) = StepLatents::nearest_missing(&done, cursor.load(Ordering::Relaxed))
            {
                if let Ok(newer) = req_rx.try_recv() {
                    next = Some(newer);
                    break;
                }
                done[i] = true;
                // A step that fails to decode keeps its placeholder; the others still come.
                if let Ok((x_t, x0)) = catch(|| {
                    inkdrop::support::on_pool(|| latents.decode(&pipe, i))
                        .map_err(|e| e.to_string())
                }) {
                    if tx.send(FromWorker::Pictures(id, i, x_t, x0)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    req_tx
}

/// Runs `f`, turning a panic into an error message.
fn catch<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|panic| Err(format!("generation failed: {}", panic_message(&*panic))))
}

/// The text of a caught panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "internal error".into())
}

/// Puts the terminal back: raw mode off, main screen, cursor visible.
fn restore_terminal() {
    let _ = crossterm::terminal::disable_raw_mode();
    let _ = crossterm::execute!(
        std::io::stdout(),
        crossterm::terminal::LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

fn picker(choice: Graphics) -> Picker {
    let mut p = match choice {
        Graphics::Auto if inkdrop::support::terminal::names_graphics_terminal() => {
            Picker::from_query_stdio().unwrap_or_else(|_| Picker::halfblocks())
        }
        _ => Picker::halfblocks(),
    };
    match choice {
        Graphics::Kitty => p.set_protocol_type(ProtocolType::Kitty),
        Graphics::Sixel => p.set_protocol_type(ProtocolType::Sixel),
        Graphics::Iterm2 => p.set_protocol_type(ProtocolType::Iterm2),
        _ => {}
    }
    p
}

pub fn run(args: &ExploreArgs) -> anyhow::Result<()> {
    if args.steps == 0 || args.steps > 1000 {
        bail!(
            "--steps {}: choose 1 to 1000 (30 is a good start)",
            args.steps
        );
    }
    if !args.guidance_scale.is_finite() || args.guidance_scale < 0.0 {
        bail!(
            "--guidance-scale {}: use a number >= 0 (1 = no guidance, 7.5 is SD's default)",
            args.guidance_scale
        );
    }
    let x0 = match &args.image {
        Some(path) => {
            let img = load_image(path)?;
            let (img, resized) = inkdrop::clip::bundle::fit_image(&img, 32);
            if resized {
                eprintln!("{}: resized to 32x32", path.display());
            }
            img
        }
        None => render(&sample_at(&WorldConfig::default(), 7, 0).scene, 32),
    };
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!(
            "inkdrop explore is an interactive terminal program, and stdout or stdin is not a terminal \
             (piped or redirected). Run it directly in a terminal; for files instead of a screen, \
             use `inkdrop generate --save-steps DIR` or `inkdrop attention`."
        );
    }
    let pipe = TextToImage::load_default().context("loading the shipped models from data/")?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| inkdrop::support::files::default_out_dir("explore"));
    let settings = Settings {
        prompt: args.prompt.clone(),
        sampler: args.sampler,
        steps: args.steps,
        guidance_scale: args.guidance_scale,
        seed: args.seed,
    };
    let mode = if args.forward {
        Mode::Forward
    } else {
        Mode::Reverse
    };
    let mut app = App::new(
        settings,
        ForwardFrames::new(x0, args.beta_schedule, 0),
        mode,
    );

    // The terminal: asked for its graphics protocol before raw mode, restored however we leave.
    let picker = picker(args.graphics);
    let default_hook = std::panic::take_hook();
    let ui_thread = std::thread::current().id();
    std::panic::set_hook(Box::new(move |info| {
        // Worker panics are caught and shown in the status line; only a panic of the UI
        // thread ends the program, and then the terminal must be put back first.
        if std::thread::current().id() == ui_thread {
            restore_terminal();
            default_hook(info);
        }
    }));
    let mut terminal = ratatui::init();
    let result = event_loop(&mut terminal, &mut app, pipe, picker, &out);
    ratatui::restore();
    restore_terminal();
    result
}

fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    app: &mut App,
    pipe: TextToImage,
    picker: Picker,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let (tx, rx): (Sender<FromWorker>, Receiver<FromWorker>) = channel();
    let cursor = Arc::new(AtomicUsize::new(app.step));
    let worker = spawn_worker(pipe, tx, Arc::clone(&cursor));
    let id = app.start_generation();
    worker.send((id, app.settings.clone()))?;
    let mut images = ImageCache::threaded(picker);
    let mut last_size = terminal.size()?;
    let mut last_tick = Instant::now();
    let tick = Duration::from_millis(120);
    let mut dirty = true;
    loop {
        while let Ok(msg) = rx.try_recv() {
            match msg {
                FromWorker::Progress(id, done, total) => app.on_progress(id, done, total),
                FromWorker::Done(id, result) => app.on_generated(id, *result),
                FromWorker::Pictures(id, i, x_t, x0) => app.on_pictures(id, i, x_t, x0),
            }
            dirty = true;
        }
        cursor.store(app.step, Ordering::Relaxed);
        if images.collect() {
            dirty = true;
        }
        let size = terminal.size()?;
        if size != last_size {
            images.clear();
            last_size = size;
            dirty = true;
        }
        if dirty {
            terminal.draw(|f| ui::draw(f, app, &mut images))?;
            dirty = false;
        }
        let decoding = app
            .reverse
            .as_ref()
            .is_some_and(|r| r.pictures_done() < r.len());
        let wait = if images.busy()
            || decoding
            || matches!(app.status, inkdrop::explore::app::Status::Running { .. })
        {
            Duration::from_millis(15)
        } else if app.playing {
            tick.saturating_sub(last_tick.elapsed())
        } else {
            Duration::from_millis(250)
        };
        if event::poll(wait)? {
            match event::read()? {
                Event::Key(key) if key.kind != KeyEventKind::Release => {
                    match app.handle_key(key) {
                        Effect::Quit => return Ok(()),
                        Effect::Generate => {
                            let id = app.start_generation();
                            worker.send((id, app.settings.clone()))?;
                        }
                        Effect::WritePng => {
                            app.message = Some(match write_png(app, out) {
                                Ok(path) => format!("wrote {}", path.display()),
                                Err(e) => format!("could not write the PNG: {e}"),
                            });
                        }
                        Effect::None => {}
                    }
                    dirty = true;
                }
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
        if app.playing && last_tick.elapsed() >= tick {
            app.tick();
            last_tick = Instant::now();
            dirty = true;
        }
    }
}

fn write_png(app: &App, out: &std::path::Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("creating {} (choose another with --out)", out.display()))?;
    let path = out.join(panels_file_name(app));
    save_png(&panels_picture(app)?, &path)?;
    Ok(path)
}
