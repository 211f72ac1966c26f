//! The explorer's state and how keys change it. Pure: no terminal, no model; the event loop
//! performs the [`Effect`]s that [`App::handle_key`] asks for.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use image::RgbImage;

use super::frames::{next_sampler, next_schedule, ForwardFrames, NoiseView, ReverseFrames};
use crate::schedulers::SamplerKind;

/// Reverse: scrub a generation's denoising steps. Forward: scrub the noising of one picture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Reverse,
    Forward,
}

/// What a generation is run with; changing any of these re-runs the pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub prompt: String,
    pub sampler: SamplerKind,
    pub steps: usize,
    pub guidance_scale: f64,
    pub seed: u64,
}

/// Where the background generation is.
#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    /// Generation `id` has done `done` of `total` steps.
    Running {
        id: u64,
        done: usize,
        total: usize,
    },
    Ready,
    Failed(String),
}

/// Everything a key can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
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
}

/// What the event loop must do after a key.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    None,
    /// Run the pipeline again with `App::settings`.
    Generate,
    /// Save the current panels as a PNG.
    WritePng,
    Quit,
}

/// In which mode a binding applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modes {
    Both,
    ReverseOnly,
    ForwardOnly,
}

/// One line of the key map: the keys, what they do, and whether the bottom bar lists them.
pub struct Binding {
    pub keys: &'static [(KeyCode, KeyModifiers)],
    /// How the help writes the keys.
    pub label: &'static str,
    pub action: Action,
    pub help: &'static str,
    pub modes: Modes,
    /// The word in the one-line bar at the bottom, if listed there (the `?` help lists all).
    pub bar: Option<&'static str>,
}

const NONE: KeyModifiers = KeyModifiers::NONE;
const SHIFT: KeyModifiers = KeyModifiers::SHIFT;
const CTRL: KeyModifiers = KeyModifiers::CONTROL;

/// The key map: the handler and both help displays read this one table.
pub const KEYMAP: &[Binding] = &[
    Binding {
        keys: &[(KeyCode::Left, NONE), (KeyCode::Char('h'), NONE)],
        label: "←/h",
        action: Action::StepBack,
        help: "one step back (toward noise)",
        modes: Modes::Both,
        bar: Some("back"),
    },
    Binding {
        keys: &[(KeyCode::Right, NONE), (KeyCode::Char('l'), NONE)],
        label: "→/l",
        action: Action::StepForward,
        help: "one step on (toward the picture)",
        modes: Modes::Both,
        bar: Some("on"),
    },
    Binding {
        keys: &[
            (KeyCode::Left, SHIFT),
            (KeyCode::PageUp, NONE),
            (KeyCode::Char('H'), NONE),
        ],
        label: "⇧←/PgUp",
        action: Action::BackTen,
        help: "ten steps back",
        modes: Modes::Both,
        bar: None,
    },
    Binding {
        keys: &[
            (KeyCode::Right, SHIFT),
            (KeyCode::PageDown, NONE),
            (KeyCode::Char('L'), NONE),
        ],
        label: "⇧→/PgDn",
        action: Action::ForwardTen,
        help: "ten steps on",
        modes: Modes::Both,
        bar: None,
    },
    Binding {
        keys: &[(KeyCode::Home, NONE)],
        label: "Home",
        action: Action::First,
        help: "first step",
        modes: Modes::Both,
        bar: None,
    },
    Binding {
        keys: &[(KeyCode::End, NONE)],
        label: "End",
        action: Action::Last,
        help: "last step",
        modes: Modes::Both,
        bar: None,
    },
    Binding {
        keys: &[(KeyCode::Char(' '), NONE)],
        label: "space",
        action: Action::PlayPause,
        help: "play / pause",
        modes: Modes::Both,
        bar: Some("play"),
    },
    Binding {
        keys: &[(KeyCode::Up, NONE), (KeyCode::Char('k'), NONE)],
        label: "↑/k",
        action: Action::TokenUp,
        help: "previous token (attention panel)",
        modes: Modes::ReverseOnly,
        bar: None,
    },
    Binding {
        keys: &[(KeyCode::Down, NONE), (KeyCode::Char('j'), NONE)],
        label: "↓/j",
        action: Action::TokenDown,
        help: "next token (attention panel)",
        modes: Modes::ReverseOnly,
        bar: Some("token"),
    },
    Binding {
        keys: &[(KeyCode::Tab, NONE)],
        label: "tab",
        action: Action::CycleNoise,
        help: "noise panel: guided ε, ε(prompt), ε(empty), their difference",
        modes: Modes::ReverseOnly,
        bar: Some("noise"),
    },
    Binding {
        keys: &[(KeyCode::Char('e'), NONE)],
        label: "e",
        action: Action::EditPrompt,
        help: "edit the prompt, Enter re-runs",
        modes: Modes::ReverseOnly,
        bar: Some("prompt"),
    },
    Binding {
        keys: &[(KeyCode::Char('s'), NONE)],
        label: "s",
        action: Action::CycleSampler,
        help: "next sampler (re-runs)",
        modes: Modes::ReverseOnly,
        bar: Some("sampler"),
    },
    Binding {
        keys: &[(KeyCode::Char('+'), NONE), (KeyCode::Char('='), NONE)],
        label: "+",
        action: Action::GuidanceUp,
        help: "guidance scale +0.5 (re-runs)",
        modes: Modes::ReverseOnly,
        bar: Some("guidance"),
    },
    Binding {
        keys: &[(KeyCode::Char('-'), NONE)],
        label: "-",
        action: Action::GuidanceDown,
        help: "guidance scale −0.5 (re-runs)",
        modes: Modes::ReverseOnly,
        bar: None,
    },
    Binding {
        keys: &[(KeyCode::Char('n'), NONE)],
        label: "n",
        action: Action::NewSeed,
        help: "new seed (re-runs)",
        modes: Modes::ReverseOnly,
        bar: Some("seed"),
    },
    Binding {
        keys: &[(KeyCode::Char('b'), NONE)],
        label: "b",
        action: Action::CycleSchedule,
        help: "next beta schedule: linear, scaled_linear, cosine",
        modes: Modes::ForwardOnly,
        bar: Some("schedule"),
    },
    Binding {
        keys: &[(KeyCode::Char('f'), NONE)],
        label: "f",
        action: Action::ToggleMode,
        help: "switch forward (noising) / reverse (denoising)",
        modes: Modes::Both,
        bar: Some("mode"),
    },
    Binding {
        keys: &[(KeyCode::Char('w'), NONE)],
        label: "w",
        action: Action::WritePng,
        help: "write the panels to a PNG",
        modes: Modes::Both,
        bar: Some("png"),
    },
    Binding {
        keys: &[(KeyCode::Char('?'), NONE)],
        label: "?",
        action: Action::Help,
        help: "all keys",
        modes: Modes::Both,
        bar: Some("help"),
    },
    Binding {
        keys: &[
            (KeyCode::Char('q'), NONE),
            (KeyCode::Esc, NONE),
            (KeyCode::Char('c'), CTRL),
        ],
        label: "q",
        action: Action::Quit,
        help: "quit (also Esc, Ctrl-C)",
        modes: Modes::Both,
        bar: Some("quit"),
    },
];

impl Binding {
    pub fn applies(&self, mode: Mode) -> bool {
        match self.modes {
            Modes::Both => true,
            Modes::ReverseOnly => mode == Mode::Reverse,
            Modes::ForwardOnly => mode == Mode::Forward,
        }
    }

    fn matches(&self, key: &KeyEvent) -> bool {
        // Terminals report Shift with upper-case letters and symbols such as '?' and '+'.
        let mods = match key.code {
            KeyCode::Char(_) => key.modifiers - KeyModifiers::SHIFT,
            _ => key.modifiers,
        };
        self.keys.iter().any(|&(c, m)| c == key.code && m == mods)
    }
}

/// The action bound to `key` in `mode`, if any.
pub fn action_for(mode: Mode, key: &KeyEvent) -> Option<Action> {
    KEYMAP
        .iter()
        .find(|b| b.applies(mode) && b.matches(key))
        .map(|b| b.action)
}

/// Forward mode scrubs 1,000 timesteps: an arrow moves this many.
pub const FORWARD_STRIDE: usize = 10;

/// The whole state of the explorer.
pub struct App {
    pub mode: Mode,
    pub settings: Settings,
    pub status: Status,
    /// The latest finished generation (kept on screen while a new one runs).
    pub reverse: Option<ReverseFrames>,
    pub forward: ForwardFrames,
    /// Step index in reverse mode (0 = noisiest).
    pub step: usize,
    /// Timestep in forward mode.
    pub t: usize,
    /// Selected text token for the attention panel.
    pub token: usize,
    pub noise_view: NoiseView,
    pub playing: bool,
    pub help_open: bool,
    /// The prompt being edited (Some while the editor is open).
    pub editing: Option<String>,
    /// A one-line message (file written, error, ...).
    pub message: Option<String>,
    /// Id of the generation whose result we wait for.
    pub generation: u64,
    /// Seconds the shown generation took (the trace; its pictures are decoded afterwards).
    pub ready_seconds: f64,
}

impl App {
    pub fn new(settings: Settings, forward: ForwardFrames, mode: Mode) -> Self {
        Self {
            mode,
            settings,
            status: Status::Ready,
            reverse: None,
            forward,
            step: 0,
            t: 0,
            token: 1,
            noise_view: NoiseView::Guided,
            playing: false,
            help_open: false,
            editing: None,
            message: None,
            generation: 0,
            ready_seconds: 0.0,
        }
    }

    /// Number of positions the cursor can take in the current mode.
    pub fn positions(&self) -> usize {
        match self.mode {
            Mode::Reverse => self.reverse.as_ref().map_or(0, ReverseFrames::len),
            Mode::Forward => self.forward.num_timesteps(),
        }
    }

    fn cursor(&self) -> usize {
        match self.mode {
            Mode::Reverse => self.step,
            Mode::Forward => self.t,
        }
    }

    fn set_cursor(&mut self, v: usize) {
        let last = self.positions().saturating_sub(1);
        match self.mode {
            Mode::Reverse => self.step = v.min(last),
            Mode::Forward => self.t = v.min(last),
        }
    }

    /// Moves the cursor by `delta` positions (forward mode: `delta` strides of timesteps).
    fn move_by(&mut self, delta: isize) {
        let unit = match self.mode {
            Mode::Reverse => 1,
            Mode::Forward => FORWARD_STRIDE as isize,
        };
        let v = (self.cursor() as isize + delta * unit).max(0) as usize;
        self.set_cursor(v);
    }

    /// Marks a new generation as started and returns its id.
    pub fn start_generation(&mut self) -> u64 {
        self.generation += 1;
        self.status = Status::Running {
            id: self.generation,
            done: 0,
            total: self.settings.steps,
        };
        self.generation
    }

    /// Progress of generation `id`.
    pub fn on_progress(&mut self, id: u64, done: usize, total: usize) {
        if id == self.generation {
            self.status = Status::Running { id, done, total };
        }
    }

    /// Generation `id` finished: show it (a stale result is dropped).
    pub fn on_generated(&mut self, id: u64, result: Result<(ReverseFrames, f64), String>) {
        if id != self.generation {
            return;
        }
        match result {
            Ok((frames, seconds)) => {
                self.step = self.step.min(frames.len().saturating_sub(1));
                self.token = self.token.min(frames.tokens.len().saturating_sub(1));
                self.reverse = Some(frames);
                self.ready_seconds = seconds;
                self.status = Status::Ready;
            }
            Err(e) => self.status = Status::Failed(e),
        }
    }

    /// Step `i`'s decoded pictures of generation `id` arrived (stale ones are dropped).
    pub fn on_pictures(&mut self, id: u64, i: usize, x_t: RgbImage, pred_x0: RgbImage) {
        if id != self.generation {
            return;
        }
        if let Some(r) = &mut self.reverse {
            r.set_pictures(i, x_t, pred_x0);
        }
    }

    /// Playback: one step on; stops at the end.
    pub fn tick(&mut self) {
        if !self.playing {
            return;
        }
        let before = self.cursor();
        self.move_by(1);
        if self.cursor() == before {
            self.playing = false;
        }
    }

    /// Applies one key. Editing the prompt and the help screen take keys first.
    pub fn handle_key(&mut self, key: KeyEvent) -> Effect {
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            return Effect::Quit;
        }
        if let Some(buffer) = &mut self.editing {
            match key.code {
                KeyCode::Enter => {
                    let prompt = buffer.trim().to_string();
                    self.editing = None;
                    if prompt != self.settings.prompt {
                        self.settings.prompt = prompt;
                        return Effect::Generate;
                    }
                }
                KeyCode::Esc => self.editing = None,
                KeyCode::Backspace => {
                    buffer.pop();
                }
                KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => {
                    buffer.push(c);
                }
                _ => {}
            }
            return Effect::None;
        }
        if self.help_open {
            self.help_open = false;
            return match action_for(self.mode, &key) {
                Some(Action::Quit) if key.code != KeyCode::Esc => Effect::Quit,
                _ => Effect::None,
            };
        }
        let Some(action) = action_for(self.mode, &key) else {
            return Effect::None;
        };
        self.message = None;
        match action {
            Action::StepBack => self.move_by(-1),
            Action::StepForward => self.move_by(1),
            Action::BackTen => self.move_by(-10),
            Action::ForwardTen => self.move_by(10),
            Action::First => self.set_cursor(0),
            Action::Last => self.set_cursor(usize::MAX),
            Action::PlayPause => {
                if !self.playing && self.cursor() + 1 >= self.positions() {
                    self.set_cursor(0);
                }
                self.playing = !self.playing;
            }
            Action::TokenUp => self.token = self.token.saturating_sub(1),
            Action::TokenDown => {
                let n = self.reverse.as_ref().map_or(1, |r| r.tokens.len());
                self.token = (self.token + 1).min(n.saturating_sub(1));
            }
            Action::CycleNoise => self.noise_view = self.noise_view.next(),
            Action::EditPrompt => self.editing = Some(self.settings.prompt.clone()),
            Action::CycleSampler => {
                self.settings.sampler = next_sampler(self.settings.sampler);
                return Effect::Generate;
            }
            Action::GuidanceUp | Action::GuidanceDown => {
                let d = if action == Action::GuidanceUp {
                    0.5
                } else {
                    -0.5
                };
                let g = (self.settings.guidance_scale + d).clamp(0.0, 30.0);
                if g != self.settings.guidance_scale {
                    self.settings.guidance_scale = g;
                    return Effect::Generate;
                }
            }
            Action::NewSeed => {
                self.settings.seed = self.settings.seed.wrapping_add(1);
                return Effect::Generate;
            }
            Action::CycleSchedule => {
                let next = next_schedule(self.forward.schedule_kind);
                self.forward.set_schedule(next);
            }
            Action::ToggleMode => {
                self.playing = false;
                self.mode = match self.mode {
                    Mode::Reverse => Mode::Forward,
                    Mode::Forward => Mode::Reverse,
                };
            }
            Action::WritePng => return Effect::WritePng,
            Action::Help => self.help_open = true,
            Action::Quit => return Effect::Quit,
        }
        Effect::None
    }
}
