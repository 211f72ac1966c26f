//! Aligned text tables for the terminal and the same rows as Markdown for the book, so a number
//! printed by a chapter and the number on the book page come from one place.

/// A table of preformatted cells.
#[derive(Clone, Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row (missing cells print empty, extra cells are kept).
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Self {
        self.rows.push(cells.into_iter().map(Into::into).collect());
        self
    }

    fn widths(&self) -> Vec<usize> {
        let cols = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.headers.len()])
            .max()
            .unwrap_or(0);
        (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .chain([&self.headers])
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    fn line(cells: &[String], widths: &[usize], sep: &str) -> String {
        widths
            .iter()
            .enumerate()
            .map(|(c, w)| {
                let cell = cells.get(c).map(String::as_str).unwrap_or("");
                format!("{cell:>w$}")
            })
            .collect::<Vec<_>>()
            .join(sep)
    }

    /// Right-aligned columns with a rule under the header, for the terminal.
    pub fn to_text(&self) -> String {
        let widths = self.widths();
        let mut out = Self::line(&self.headers, &widths, "  ");
        out.push('\n');
        out.push_str(
            &"-".repeat(widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1)),
        );
        for r in &self.rows {
            out.push('\n');
            out.push_str(&Self::line(r, &widths, "  "));
        }
        out
    }

    /// A GitHub-flavoured Markdown table, for `book/src/generated/`. Cells are escaped so that
    /// `|` does not split a cell and `<|endoftext|>` or `</w>` are not read as HTML.
    pub fn to_markdown(&self) -> String {
        let escaped = Table {
            headers: self.headers.iter().map(|c| escape_markdown(c)).collect(),
            rows: self
                .rows
                .iter()
                .map(|r| r.iter().map(|c| escape_markdown(c)).collect())
                .collect(),
        };
        escaped.markdown_lines()
    }

    fn markdown_lines(&self) -> String {
        let widths = self.widths();
        let mut out = format!("| {} |\n", Self::line(&self.headers, &widths, " | "));
        let rule: Vec<String> = widths
            .iter()
            .map(|w| format!("{}:", "-".repeat(w.saturating_sub(1).max(1))))
            .collect();
        out.push_str(&format!(
            "|{}|\n",
            rule.iter()
                .map(|r| format!(" {r} "))
                .collect::<Vec<_>>()
                .join("|")
        ));
        for r in &self.rows {
            out.push_str(&format!("| {} |\n", Self::line(r, &widths, " | ")));
        }
        out
    }
}

/// Escapes a table cell for Markdown + HTML: `|` as `\|`, `<` and `>` as entities, `&` first.
fn escape_markdown(cell: &str) -> String {
    cell.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('|', "\\|")
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_text())
    }
}
