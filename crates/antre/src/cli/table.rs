//! Aligned text tables and human-readable sizes, for people.

use std::fmt;

/// Rows under a header, printed with columns padded to their widest cell.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles (all empty: no header line).
    pub fn new(header: Vec<&str>) -> Table {
        Table {
            header: header.into_iter().map(str::to_owned).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show_header = self.header.iter().any(|h| !h.is_empty());
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(cell.chars().count());
                }
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: &[String]| -> fmt::Result {
            let last = cells.len().saturating_sub(1);
            for (i, cell) in cells.iter().enumerate() {
                if i == last {
                    write!(f, "{cell}")?;
                } else {
                    write!(f, "{cell:<w$}  ", w = widths[i])?;
                }
            }
            writeln!(f)
        };
        if show_header {
            line(f, &self.header)?;
        }
        for row in &self.rows {
            line(f, row)?;
        }
        Ok(())
    }
}

/// A byte count in binary units with three significant figures, as
/// RabbitMQ's UI shows them: `512 B`, `1.5 KiB`, `12.3 MiB`, `45.6 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match (unit, value) {
        (0, _) => format!("{bytes} B"),
        (_, v) if v < 10.0 => format!("{v:.2} {}", UNITS[unit]),
        (_, v) if v < 100.0 => format!("{v:.1} {}", UNITS[unit]),
        (_, v) => format!("{v:.0} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_in_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(50_000_000), "47.7 MiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.00 GiB");
        assert_eq!(human_bytes(200 * 1024 * 1024 * 1024), "200 GiB");
    }

    #[test]
    fn columns_are_aligned() {
        let mut t = Table::new(vec!["name", "messages"]);
        t.row(vec!["payments".into(), "3".into()]);
        t.row(vec!["q".into(), "12".into()]);
        assert_eq!(
            t.to_string(),
            "name      messages\npayments  3\nq         12\n"
        );
    }
}
