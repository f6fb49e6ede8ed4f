//! Inline SVG charts for the HTML pages, built as strings: no chart library to vendor, and the
//! page works offline. Every plotted element has class `mark` (the page's self-check and the
//! Chromium test look for them); a chart without a single finite point says "no data" instead of
//! drawing NaN coordinates.

use std::fmt::Write as _;

use super::esc;

/// Pixel size of every chart (the page scales it to its column with CSS).
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 44.0;

/// Series colours, in order (colour-blind-safe Tableau-like set).
const COLORS: [&str; 6] = [
    "#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#b07aa1", "#9c755f",
];

/// Line series keep a dot (with a tooltip) per point up to this many points; longer ones get a
/// dot on every n-th point so a page stays small.
const MAX_DOTS: usize = 120;

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Kind {
    /// Points joined in x order, with hover dots.
    Line,
    /// One bar per point, from x to x + width, from 0 to y.
    Bars { width: f64 },
}

#[derive(Clone, Debug)]
pub(crate) struct Series {
    pub name: String,
    pub kind: Kind,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub(crate) fn line(name: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            kind: Kind::Line,
            points,
        }
    }

    pub(crate) fn bars(name: impl Into<String>, width: f64, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            kind: Kind::Bars { width },
            points,
        }
    }

    /// The points that can be drawn (NaN and infinities left out).
    fn finite(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    }
}

/// One chart: a title, axis labels and its series.
#[derive(Clone, Debug)]
pub(crate) struct Chart {
    /// `data-chart` attribute: what the Chromium test looks each chart up by.
    pub id: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// A fixed y range (a CDF's 0–100 %), else from 0 to the data's maximum.
    pub y_range: Option<(f64, f64)>,
    /// Ticks on whole numbers only (turn indices).
    pub x_integer: bool,
    /// The x axis starts at 0 rather than at the data's minimum.
    pub x_from_zero: bool,
}

impl Chart {
    pub(crate) fn new(id: &str, title: &str, x_label: &str, y_label: &str) -> Chart {
        Chart {
            id: id.into(),
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
            y_range: None,
            x_integer: false,
            x_from_zero: true,
        }
    }

    pub(crate) fn with(mut self, s: Series) -> Chart {
        self.series.push(s);
        self
    }

    /// The x and y axes the data calls for; `None` without data.
    pub(crate) fn axes(&self) -> Option<(Axis, Axis)> {
        let mut x = (f64::INFINITY, f64::NEG_INFINITY);
        let mut y = (f64::INFINITY, f64::NEG_INFINITY);
        for s in &self.series {
            let w = match s.kind {
                Kind::Bars { width } if width.is_finite() && width > 0.0 => width,
                _ => 0.0,
            };
            for (px, py) in s.finite() {
                x = (x.0.min(px), x.1.max(px + w));
                y = (y.0.min(py), y.1.max(py));
            }
        }
        if !x.0.is_finite() {
            return None;
        }
        if self.x_from_zero {
            x.0 = x.0.min(0.0);
        }
        // Bars and every figure here start at 0.
        y.0 = y.0.min(0.0);
        let (y_lo, y_hi) = self.y_range.unwrap_or(y);
        let min_step = if self.x_integer { 1.0 } else { 0.0 };
        Some((Axis::nice(x.0, x.1, min_step), Axis::nice(y_lo, y_hi, 0.0)))
    }

    /// The chart as an `<svg>` element.
    pub(crate) fn svg(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            r#"<svg class="chart" data-chart="{}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"#,
            esc(&self.id),
            esc(&self.title)
        );
        let _ = write!(
            out,
            r#"<text class="title" x="{LEFT}" y="18">{}</text>"#,
            esc(&self.title)
        );
        let Some((ax, ay)) = self.axes() else {
            let _ = write!(
                out,
                r#"<text class="nodata" x="{}" y="{}" text-anchor="middle">no data</text></svg>"#,
                WIDTH / 2.0,
                HEIGHT / 2.0
            );
            return out.replacen("<svg ", "<svg data-empty=\"1\" ", 1);
        };
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let sx = |x: f64| LEFT + ax.frac(x) * plot_w;
        let sy = |y: f64| TOP + (1.0 - ay.frac(y)) * plot_h;
        // Grid and tick labels.
        for t in &ay.ticks {
            let y = sy(*t);
            let _ = write!(
                out,
                r#"<line class="grid" x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT + plot_w,
                LEFT - 6.0,
                y + 4.0,
                ay.label(*t)
            );
        }
        for t in &ax.ticks {
            let x = sx(*t);
            let _ = write!(
                out,
                r#"<line class="grid" x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{:.1}"/><text class="tick" x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                TOP + plot_h,
                TOP + plot_h + 16.0,
                ax.label(*t)
            );
        }
        let _ = write!(
            out,
            r#"<rect class="frame" x="{LEFT}" y="{TOP}" width="{plot_w:.1}" height="{plot_h:.1}"/><text class="axis" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text class="axis" transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            LEFT + plot_w / 2.0,
            HEIGHT - 6.0,
            esc(&self.x_label),
            TOP + plot_h / 2.0,
            esc(&self.y_label)
        );
        for (i, s) in self.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let name = esc(&s.name);
            let tip = |x: f64, y: f64| {
                format!(
                    "{}: {} — {}: {}",
                    esc(&self.x_label),
                    short(x),
                    name,
                    short(y)
                )
            };
            let _ = write!(out, r#"<g class="series" data-series="{name}">"#);
            match s.kind {
                Kind::Line => {
                    let mut pts: Vec<(f64, f64)> = s.finite().collect();
                    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                    if pts.len() > 1 {
                        let mut d = String::new();
                        for (j, (x, y)) in pts.iter().enumerate() {
                            let _ = write!(
                                d,
                                "{}{:.1},{:.1}",
                                if j == 0 { 'M' } else { 'L' },
                                sx(*x),
                                sy(*y)
                            );
                        }
                        let _ =
                            write!(out, r#"<path class="mark line" d="{d}" stroke="{color}"/>"#);
                    }
                    let every = pts.len().div_ceil(MAX_DOTS).max(1);
                    for (j, (x, y)) in pts.iter().enumerate() {
                        // Always keep the last point: a curve's end (a CDF's max) is what
                        // users hover.
                        if j % every != 0 && j + 1 != pts.len() {
                            continue;
                        }
                        let _ = write!(
                            out,
                            r#"<circle class="mark dot" cx="{:.1}" cy="{:.1}" r="{}" fill="{color}"><title>{}</title></circle>"#,
                            sx(*x),
                            sy(*y),
                            if pts.len() == 1 { 4 } else { 3 },
                            tip(*x, *y)
                        );
                    }
                }
                Kind::Bars { width } => {
                    let y0 = sy(0.0_f64.max(ay.min));
                    for (x, y) in s.finite() {
                        let x0 = sx(x);
                        let x1 = sx(x + width);
                        let top = sy(y);
                        let _ = write!(
                            out,
                            r#"<rect class="mark bar" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{}</title></rect>"#,
                            x0.min(x1),
                            top.min(y0),
                            (x1 - x0).abs().max(1.0),
                            (y0 - top).abs(),
                            tip(x, y)
                        );
                    }
                }
            }
            out.push_str("</g>");
        }
        if self.series.len() > 1 {
            let mut x = LEFT + plot_w;
            for (i, s) in self.series.iter().enumerate().rev() {
                let w = 16.0 + 6.5 * s.name.chars().count() as f64;
                x -= w;
                let _ = write!(
                    out,
                    r#"<rect x="{x:.1}" y="8" width="10" height="10" fill="{}"/><text class="legend" x="{:.1}" y="17">{}</text>"#,
                    COLORS[i % COLORS.len()],
                    x + 13.0,
                    esc(&s.name)
                );
            }
        }
        out.push_str("</svg>");
        out
    }
}

/// An axis: its range and tick positions, on a 1-2-5 step.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Axis {
    pub min: f64,
    pub max: f64,
    pub step: f64,
    pub ticks: Vec<f64>,
}

impl Axis {
    /// A range covering `[lo, hi]` with about five ticks on round values; `min_step` bounds the
    /// step from below (1 for whole numbers). A degenerate or non-finite range is widened, so the
    /// result always has `min < max` and finite ticks.
    pub(crate) fn nice(lo: f64, hi: f64, min_step: f64) -> Axis {
        let (mut lo, mut hi) = if lo.is_finite() && hi.is_finite() && lo <= hi {
            (lo, hi)
        } else {
            (0.0, 1.0)
        };
        if hi - lo <= 1e-12 * hi.abs().max(1.0) {
            let pad = if min_step > 0.0 {
                min_step
            } else if lo == 0.0 {
                1.0
            } else {
                lo.abs() * 0.1
            };
            if lo == 0.0 {
                hi = pad;
            } else {
                lo -= pad;
                hi += pad;
            }
        }
        let raw = (hi - lo) / 5.0;
        let mag = 10f64.powf(raw.log10().floor());
        let norm = raw / mag;
        let step = if norm <= 1.0 {
            1.0
        } else if norm <= 2.0 {
            2.0
        } else if norm <= 5.0 {
            5.0
        } else {
            10.0
        } * mag;
        let step = step.max(min_step);
        let min = (lo / step).floor() * step;
        let max = (hi / step).ceil() * step;
        let n = ((max - min) / step).round() as usize;
        let ticks = (0..=n).map(|i| min + i as f64 * step).collect();
        Axis {
            min,
            max,
            step,
            ticks,
        }
    }

    /// Where `v` falls on the axis, 0 at `min` and 1 at `max`.
    fn frac(&self, v: f64) -> f64 {
        (v - self.min) / (self.max - self.min)
    }

    /// A tick label with as many decimals as the step needs.
    fn label(&self, v: f64) -> String {
        let decimals = (-self.step.log10().floor()).max(0.0) as usize;
        let v = if v.abs() < self.step * 1e-9 { 0.0 } else { v };
        format!("{v:.decimals$}")
    }
}

/// A value for a tooltip or label: four significant figures or so, no exponent for everyday
/// magnitudes, no trailing zeros.
pub(crate) fn short(v: f64) -> String {
    let a = v.abs();
    let s = if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every number in the SVG's coordinate attributes and path data.
    fn coordinates(svg: &str) -> Vec<String> {
        let mut out = Vec::new();
        for attr in [
            "x", "y", "cx", "cy", "width", "height", "d", "x1", "x2", "y1", "y2",
        ] {
            let pat = format!(" {attr}=\"");
            for (i, _) in svg.match_indices(&pat) {
                let rest = &svg[i + pat.len()..];
                let val = &rest[..rest.find('"').unwrap()];
                out.extend(
                    val.split(|c: char| c == ',' || c.is_ascii_alphabetic())
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                );
            }
        }
        out
    }

    #[test]
    fn axis_covers_the_data_on_round_steps() {
        let a = Axis::nice(0.0, 873.0, 0.0);
        assert_eq!((a.min, a.max, a.step), (0.0, 1000.0, 200.0));
        assert_eq!(a.ticks, [0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]);
        let a = Axis::nice(0.013, 0.0461, 0.0);
        assert!(a.min <= 0.013 && a.max >= 0.0461, "{a:?}");
        assert_eq!(a.step, 0.01);
        assert_eq!(a.label(0.03), "0.03");
        let a = Axis::nice(-3.0, 7.0, 0.0);
        assert_eq!((a.min, a.max), (-4.0, 8.0));
        assert!(a.ticks.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn degenerate_and_bad_ranges_are_widened() {
        // All zero (a run without failures): 0..1, not 0..0 (a division by zero).
        let a = Axis::nice(0.0, 0.0, 0.0);
        assert_eq!((a.min, a.max), (0.0, 1.0));
        // One turn index: whole-number ticks around it.
        let a = Axis::nice(1.0, 1.0, 1.0);
        assert!(a.min < 1.0 && a.max > 1.0 && a.step >= 1.0, "{a:?}");
        assert!(a.ticks.iter().all(|t| t.fract() == 0.0));
        // A constant away from 0.
        let a = Axis::nice(5.0, 5.0, 0.0);
        assert!(a.min < 5.0 && a.max > 5.0);
        for (lo, hi) in [(f64::NAN, 1.0), (0.0, f64::INFINITY), (3.0, 1.0)] {
            let a = Axis::nice(lo, hi, 0.0);
            assert_eq!((a.min, a.max), (0.0, 1.0), "{lo} {hi}");
        }
        // Whole-number steps never go below 1, however many points.
        let a = Axis::nice(1.0, 3.0, 1.0);
        assert_eq!(a.step, 1.0);
        assert_eq!(a.ticks, [1.0, 2.0, 3.0]);
    }

    #[test]
    fn empty_data_draws_a_no_data_chart() {
        for chart in [
            Chart::new("c", "Empty", "x", "y"),
            Chart::new("c", "Empty series", "x", "y").with(Series::line("s", vec![])),
            Chart::new("c", "Bad values", "x", "y").with(Series::line(
                "s",
                vec![(f64::NAN, 1.0), (1.0, f64::INFINITY)],
            )),
        ] {
            let svg = chart.svg();
            assert!(chart.axes().is_none());
            assert!(
                svg.contains("no data") && svg.contains("data-empty=\"1\""),
                "{svg}"
            );
            assert!(!svg.contains("class=\"mark"), "{svg}");
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        }
    }

    #[test]
    fn lines_and_bars_plot_finite_marks_inside_the_frame() {
        let chart = Chart::new("t", "T <&>", "time (s)", "req/s")
            .with(Series::line(
                "ok",
                vec![(0.5, 10.0), (1.5, f64::NAN), (2.5, 30.0), (1.5, 20.0)],
            ))
            .with(Series::bars("failed", 1.0, vec![(0.0, 0.0), (1.0, 2.0)]));
        let (ax, ay) = chart.axes().unwrap();
        assert!(ax.min <= 0.0 && ax.max >= 2.5, "{ax:?}");
        assert!(ay.min == 0.0 && ay.max >= 30.0, "{ay:?}");
        let svg = chart.svg();
        assert!(svg.contains("T &lt;&amp;&gt;"), "title escaped: {svg}");
        assert_eq!(svg.matches("class=\"mark line\"").count(), 1);
        // Three finite points (the NaN one left out), in x order.
        assert_eq!(svg.matches("class=\"mark dot\"").count(), 3);
        assert_eq!(svg.matches("class=\"mark bar\"").count(), 2);
        let path = svg.split("class=\"mark line\" d=\"").nth(1).unwrap();
        let path = &path[..path.find('"').unwrap()];
        assert_eq!(path.matches('L').count(), 2, "{path}");
        let xs: Vec<f64> = path
            .split(['M', 'L'])
            .filter(|s| !s.is_empty())
            .map(|p| p.split(',').next().unwrap().parse().unwrap())
            .collect();
        assert!(xs.windows(2).all(|w| w[0] < w[1]), "{xs:?}");
        for c in coordinates(&svg) {
            let v: f64 = c.parse().unwrap_or_else(|_| panic!("not a number: {c}"));
            assert!(v.is_finite() && (-1.0..=WIDTH + 1.0).contains(&v), "{c}");
        }
        assert!(svg.contains("data-series=\"failed\""));
        assert!(!svg.contains("data-empty"));
    }

    #[test]
    fn a_single_point_is_a_dot_and_a_fixed_range_holds() {
        let mut chart =
            Chart::new("cdf", "CDF", "ms", "%").with(Series::line("ttft", vec![(4.0, 100.0)]));
        chart.y_range = Some((0.0, 100.0));
        let (_, ay) = chart.axes().unwrap();
        assert_eq!((ay.min, ay.max), (0.0, 100.0));
        let svg = chart.svg();
        assert!(!svg.contains("mark line"), "no zero-length path: {svg}");
        assert_eq!(svg.matches("class=\"mark dot\"").count(), 1);
    }

    #[test]
    fn long_lines_keep_a_bounded_number_of_dots() {
        let pts: Vec<(f64, f64)> = (0..1000).map(|i| (i as f64, (i % 7) as f64)).collect();
        let svg = Chart::new("l", "L", "x", "y")
            .with(Series::line("s", pts))
            .svg();
        let dots = svg.matches("class=\"mark dot\"").count();
        assert!(dots <= MAX_DOTS + 1 && dots > MAX_DOTS / 2, "{dots}");
        // The last point keeps its dot.
        assert!(svg.contains("x: 999 —"), "{}", &svg[svg.len() - 400..]);
    }

    #[test]
    fn short_numbers() {
        assert_eq!(short(0.0), "0");
        assert_eq!(short(0.1), "0.1");
        assert_eq!(short(12.345), "12.35");
        assert_eq!(short(250.0), "250");
        assert_eq!(short(-1234.4), "-1234");
    }
}
