//! Benchmark of `inkdrop explore` (issue bars: a 30-step trace ready in under 1 s with the
//! shipped models; a frame drawn in under 16 ms at 200x50). Prints medians of: the trace (what
//! the worker thread does before the first screen); one step's pictures through the VAE decoder
//! (what it does next, once per step, nearest the cursor first); the two together; one frame at
//! 200x50 and 80x24 with the pictures already encoded (what holding an arrow key costs per
//! step); and one frame whose pictures must be encoded first (the work the encoder thread keeps
//! off the drawing path), for half blocks and for the kitty protocol.
//!
//! ```text
//! cargo run --release --example bench_explore
//! ```

use clap::Parser;
use inkdrop::explore::app::{App, Mode, Settings};
use inkdrop::explore::frames::{ForwardFrames, StepLatents};
use inkdrop::explore::images::ImageCache;
use inkdrop::explore::{generate_frames, ui};
use inkdrop::pipeline::TextToImage;
use inkdrop::schedule::BetaSchedule;
use inkdrop::schedulers::SamplerKind;
use inkdrop::shapes::{render, sample_at, WorldConfig};
use inkdrop::support::bench::median_ms;
use inkdrop::support::on_pool;
use inkdrop::support::table::Table;
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use ratatui_image::picker::{Picker, ProtocolType};

/// Benchmark the terminal UI.
#[derive(Debug, Parser)]
struct Args {
    /// Repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 9)]
    reps: usize,
}

fn main() -> std::process::ExitCode {
    // Off rayon's pool, as `inkdrop explore` starts; the work goes onto it below, as the
    // terminal UI's worker thread puts it.
    inkdrop::support::run_main_off_pool(|| run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    let pipe = TextToImage::load_default()?;
    let settings = Settings {
        prompt: "a red circle above a blue square".into(),
        sampler: SamplerKind::Ddim,
        steps: 30,
        guidance_scale: 7.5,
        seed: 0,
    };
    let mut table = Table::new(["what", "median ms", "bar"]);
    let trace_ms = median_ms(args.reps.min(5), || {
        on_pool(|| generate_frames(&pipe, &settings, &mut |_, _| {})).map(|_| ())
    })?;
    table.row([
        "30-step trace with attention: the first screen (pictures follow)".to_string(),
        format!("{trace_ms:.0}"),
        "< 1000".into(),
    ]);
    let (frames, _) = generate_frames(&pipe, &settings, &mut |_, _| {})?;
    let latents = StepLatents::of(&frames.trace)?;
    let one_ms = median_ms(args.reps, || {
        on_pool(|| latents.decode(&pipe, 0)).map(|_| ())
    })?;
    table.row([
        "one step's x_t and predicted x0 through the VAE decoder".to_string(),
        format!("{one_ms:.1}"),
        String::new(),
    ]);
    let all_ms = median_ms(args.reps.min(5), || {
        on_pool(|| {
            generate_frames(&pipe, &settings, &mut |_, _| {})
                .and_then(|(mut frames, _)| frames.decode_all(&pipe))
        })
    })?;
    table.row([
        "trace and every step's pictures, one after the other".to_string(),
        format!("{all_ms:.0}"),
        String::new(),
    ]);
    let x0 = render(&sample_at(&WorldConfig::default(), 7, 0).scene, 32);
    let mut app = App::new(
        settings.clone(),
        ForwardFrames::new(x0, BetaSchedule::ScaledLinear, 0),
        Mode::Reverse,
    );
    let id = app.start_generation();
    let (mut frames, seconds) = generate_frames(&pipe, &settings, &mut |_, _| {})?;
    frames.decode_all(&pipe)?;
    app.on_generated(id, Ok((frames, seconds)));
    for (w, h) in [(200u16, 50u16), (80, 24)] {
        let mut terminal = Terminal::new(TestBackend::new(w, h))?;
        let mut images = ImageCache::inline(Picker::halfblocks());
        // Warm: every step encoded once, then time drawing while stepping through them.
        for step in 0..30 {
            app.step = step;
            terminal.draw(|f| ui::draw(f, &app, &mut images))?;
        }
        let mut step = 0;
        let warm = median_ms(args.reps * 10, || {
            step = (step + 1) % 30;
            app.step = step;
            terminal
                .draw(|f| ui::draw(f, &app, &mut images))
                .map(|_| ())
        })?;
        table.row([
            format!("frame at {w}x{h}, pictures encoded (scrubbing)"),
            format!("{warm:.2}"),
            "< 16".into(),
        ]);
        for (name, protocol) in [
            ("half blocks", ProtocolType::Halfblocks),
            ("kitty", ProtocolType::Kitty),
        ] {
            let mut picker = Picker::halfblocks();
            picker.set_protocol_type(protocol);
            let cold = median_ms(args.reps, || {
                let mut images = ImageCache::inline(picker.clone());
                terminal
                    .draw(|f| ui::draw(f, &app, &mut images))
                    .map(|_| ())
            })?;
            table.row([
                format!("frame at {w}x{h}, encoding 5 pictures first ({name}; done off the drawing path)"),
                format!("{cold:.2}"),
                String::new(),
            ]);
        }
    }
    println!("{table}");
    Ok(())
}
