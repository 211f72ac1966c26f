//! Pictures in the terminal through ratatui-image: kitty, sixel or iTerm2 graphics where the
//! terminal speaks them, coloured half blocks everywhere else. Encoding a picture for a protocol
//! (resizing, and for sixel quantising colours) happens on a worker thread, so drawing a frame
//! only copies finished encodings; a picture not encoded yet shows a placeholder for one frame.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{channel, Receiver, Sender};

use image::{imageops::FilterType, DynamicImage, RgbImage};
use ratatui::layout::Size;
use ratatui_image::picker::Picker;
use ratatui_image::protocol::Protocol;
use ratatui_image::Resize;

/// Which panel a picture belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Panel {
    XT,
    PredX0,
    Noise,
    Channels,
    Attention,
    ForwardX0,
    ForwardXT,
    ForwardNoise,
}

/// One encoded picture: the panel, the step (or timestep) and variant (token, noise view or
/// beta schedule) it shows, the generation it comes from and the cell area it was sized for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ImageKey {
    pub panel: Panel,
    pub index: usize,
    pub variant: usize,
    pub generation: u64,
    pub size: (u16, u16),
}

type Job = (ImageKey, RgbImage);
/// The worker's ends: jobs out, finished encodings back.
type Worker = (Sender<Job>, Receiver<(ImageKey, Option<Protocol>)>);

/// How many steps either side of the cursor are encoded ahead (and kept when the cache is trimmed).
pub const MAX_PREFETCH: usize = 100;

/// Encoded pictures by key.
pub struct ImageCache {
    picker: Picker,
    done: HashMap<ImageKey, Protocol>,
    pending: HashSet<ImageKey>,
    /// Pictures the terminal's protocol could not encode: not asked for again.
    failed: HashSet<ImageKey>,
    worker: Option<Worker>,
}

/// Scale to the cell area keeping proportions, nearest neighbour so pixels stay crisp.
fn encode(picker: &Picker, key: ImageKey, img: RgbImage) -> Option<Protocol> {
    let size = Size::new(key.size.0, key.size.1);
    picker
        .new_protocol(
            DynamicImage::ImageRgb8(img),
            size,
            Resize::Scale(Some(FilterType::Nearest)),
        )
        .ok()
}

impl ImageCache {
    /// Encodes on the calling thread when asked (tests and benchmarks: every frame complete).
    pub fn inline(picker: Picker) -> Self {
        Self {
            picker,
            done: HashMap::new(),
            pending: HashSet::new(),
            failed: HashSet::new(),
            worker: None,
        }
    }

    /// Encodes on a worker thread.
    pub fn threaded(picker: Picker) -> Self {
        let (job_tx, job_rx) = channel::<Job>();
        let (done_tx, done_rx) = channel();
        let p = picker.clone();
        std::thread::spawn(move || {
            while let Ok((key, img)) = job_rx.recv() {
                let proto =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| encode(&p, key, img)))
                        .ok()
                        .flatten();
                if done_tx.send((key, proto)).is_err() {
                    break;
                }
            }
        });
        Self {
            picker,
            done: HashMap::new(),
            pending: HashSet::new(),
            failed: HashSet::new(),
            worker: Some((job_tx, done_rx)),
        }
    }

    pub fn picker(&self) -> &Picker {
        &self.picker
    }

    /// Takes finished encodings from the worker; true if any arrived (time to redraw).
    pub fn collect(&mut self) -> bool {
        let Some((_, rx)) = &self.worker else {
            return false;
        };
        let mut any = false;
        while let Ok((key, proto)) = rx.try_recv() {
            self.pending.remove(&key);
            match proto {
                Some(proto) => {
                    self.done.insert(key, proto);
                }
                None => {
                    self.failed.insert(key);
                }
            }
            any = true;
        }
        any
    }

    /// Whether encodings are still being made.
    pub fn busy(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Drops every encoding (after a resize or when memory grows).
    pub fn clear(&mut self) {
        self.done.clear();
        self.pending.clear();
        self.failed.clear();
    }

    /// The encoding for `key`; on a miss, asks for it (made at once when inline) and for the
    /// other pictures `more` names, so neighbouring steps are ready when the cursor moves.
    pub fn get(
        &mut self,
        key: ImageKey,
        image: &dyn Fn(usize) -> Option<RgbImage>,
        more: &[usize],
    ) -> Option<&Protocol> {
        // A long trace can outgrow memory: keep the steps around the cursor.
        if self.done.len() > 4000 {
            self.done
                .retain(|k, _| k.index.abs_diff(key.index) <= MAX_PREFETCH);
        }
        if !self.done.contains_key(&key) {
            match &self.worker {
                None => {
                    let img = image(key.index)?;
                    let proto = encode(&self.picker, key, img)?;
                    self.done.insert(key, proto);
                }
                Some((tx, _)) => {
                    for &index in std::iter::once(&key.index).chain(more) {
                        let k = ImageKey { index, ..key };
                        if self.done.contains_key(&k)
                            || self.pending.contains(&k)
                            || self.failed.contains(&k)
                        {
                            continue;
                        }
                        if let Some(img) = image(index) {
                            if tx.send((k, img)).is_ok() {
                                self.pending.insert(k);
                            }
                        }
                    }
                }
            }
        }
        self.done.get(&key)
    }
}
