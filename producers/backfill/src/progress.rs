//! Progress output: an indicatif bar per series on a terminal, throttled log lines otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;

use crate::config::ProgressMode;

/// Seconds between plain progress lines of one series.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Where progress goes for a whole run.
#[derive(Clone)]
pub struct Progress {
    bars: Option<MultiProgress>,
    plain: bool,
    silent: bool,
}

impl Progress {
    /// Progress for `mode` (auto: bars only when stdout is a terminal).
    pub fn new(mode: ProgressMode) -> Self {
        let tty = std::io::stdout().is_terminal();
        let bars = matches!(mode, ProgressMode::Bars) || (mode == ProgressMode::Auto && tty);
        Self {
            bars: bars.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout())),
            plain: matches!(mode, ProgressMode::Plain) || (mode == ProgressMode::Auto && !tty),
            silent: mode == ProgressMode::Silent,
        }
    }

    /// Prints a line above the bars (or plainly).
    pub fn println(&self, line: &str) {
        match &self.bars {
            Some(m) => {
                if m.println(line).is_err() {
                    println!("{line}");
                }
            }
            None => println!("{line}"),
        }
    }

    /// A tracker for one series of `total` candles.
    pub fn series(&self, label: String, total: u64) -> SeriesProgress {
        let bar = self.bars.as_ref().map(|m| {
            let style = ProgressStyle::with_template(
                "{prefix:>14} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            let b = m.add(ProgressBar::new(total).with_style(style));
            b.set_prefix(label.clone());
            b
        });
        SeriesProgress {
            notes: (!self.silent).then(|| self.clone()),
            label,
            bar,
            plain: self.plain,
            total,
            state: Mutex::new(PlainState {
                done: 0,
                started: Instant::now(),
                last: Instant::now(),
            }),
        }
    }
}

struct PlainState {
    done: u64,
    started: Instant,
    last: Instant,
}

/// Progress of one series.
pub struct SeriesProgress {
    /// Where [`SeriesProgress::note`] prints (none when silent).
    notes: Option<Progress>,
    label: String,
    bar: Option<ProgressBar>,
    plain: bool,
    total: u64,
    state: Mutex<PlainState>,
}

impl SeriesProgress {
    /// `n` more candles handled (published or found present).
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
        let mut st = self.state.lock();
        st.done += n;
        if self.plain && st.last.elapsed() >= PLAIN_EVERY {
            st.last = Instant::now();
            let secs = st.started.elapsed().as_secs_f64().max(1e-3);
            let rate = st.done as f64 / secs;
            let eta = if rate > 0.0 {
                humantime_secs((self.total.saturating_sub(st.done)) as f64 / rate)
            } else {
                "?".into()
            };
            println!(
                "  {}: {}/{} candles ({:.0}/s, ETA {eta})",
                self.label, st.done, self.total, rate
            );
        }
    }

    /// Prints a line about this series (the archive plan), unless the run is silent.
    pub fn note(&self, line: &str) {
        if let Some(p) = &self.notes {
            p.println(line);
        }
    }

    /// The series is over; the bar (if any) is removed.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn humantime_secs(s: f64) -> String {
    humantime::format_duration(Duration::from_secs(s.clamp(0.0, 1e9) as u64)).to_string()
}
