//! Chapters read like notebooks: a title, then cells with a heading, some prose and printed
//! evidence. With `--interactive` (and a terminal) the reader presses Enter between cells.

use std::io::{BufRead, IsTerminal, Write};

/// Prints cells and optionally pauses between them.
pub struct Notebook {
    interactive: bool,
    cells: usize,
}

const WIDTH: usize = 96;

impl Notebook {
    /// Prints the chapter title. Pauses only if `interactive` and stdin and stdout are terminals.
    pub fn new(title: &str, interactive: bool) -> Self {
        let interactive =
            interactive && std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
        println!("{}\n{title}\n{}", "=".repeat(WIDTH), "=".repeat(WIDTH));
        Notebook {
            interactive,
            cells: 0,
        }
    }

    /// Starts a new cell with a heading (the same heading as the book's section).
    pub fn cell(&mut self, heading: &str) {
        if self.cells > 0 && self.interactive {
            print!("\n[press Enter for the next cell] ");
            let _ = std::io::stdout().flush();
            let _ = std::io::stdin().lock().read_line(&mut String::new());
        }
        self.cells += 1;
        println!("\n## {heading}\n");
    }

    /// Prints prose, wrapped to the notebook width; blank lines separate paragraphs.
    pub fn say(&self, text: &str) {
        for para in text.split("\n\n") {
            println!("{}\n", wrap(para, WIDTH));
        }
    }
}

/// Greedy word wrap.
pub fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line_len = 0;
    for word in text.split_whitespace() {
        if line_len > 0 && line_len + 1 + word.chars().count() > width {
            out.push('\n');
            line_len = 0;
        } else if line_len > 0 {
            out.push(' ');
            line_len += 1;
        }
        out.push_str(word);
        line_len += word.chars().count();
    }
    out
}
