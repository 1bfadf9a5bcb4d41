//! Dependency-free plots for hdp reports, written as self-contained SVG files: heatmap grids
//! (kept blocks per head) embed exact pixel images as PNG, so a 512 x 512 block mask stays a few
//! hundred kilobytes instead of a quarter-million SVG rectangles.

#![warn(missing_docs)]

pub mod check;
pub mod png;

/// Colour-blind-safe series colours (Okabe-Ito), for every chart's series.
pub const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#999999",
];

/// Largest panel resolution drawn; larger matrices are average-pooled down to this.
pub const MAX_PANEL_CELLS: usize = 256;

/// One heatmap panel: `rows x cols` values in `[0, 1]`, or NaN for "not applicable" (masked).
#[derive(Clone, Debug)]
pub struct Heatmap {
    /// Caption above the panel.
    pub title: String,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row-major values.
    pub values: Vec<f32>,
}

impl Heatmap {
    /// Average-pools to at most `max` cells per side (NaN cells are ignored; all-NaN stays NaN).
    pub fn pooled(&self, max: usize) -> Heatmap {
        let f = self.rows.max(self.cols).div_ceil(max.max(1)).max(1);
        if f == 1 {
            return self.clone();
        }
        let (rows, cols) = (self.rows.div_ceil(f), self.cols.div_ceil(f));
        let mut values = vec![f32::NAN; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                let (mut sum, mut cnt) = (0.0f32, 0usize);
                for i in r * f..((r + 1) * f).min(self.rows) {
                    for j in c * f..((c + 1) * f).min(self.cols) {
                        let v = self.values[i * self.cols + j];
                        if !v.is_nan() {
                            sum += v;
                            cnt += 1;
                        }
                    }
                }
                if cnt > 0 {
                    values[r * cols + c] = sum / cnt as f32;
                }
            }
        }
        Heatmap {
            title: self.title.clone(),
            rows,
            cols,
            values,
        }
    }

    fn to_png(&self) -> Vec<u8> {
        let mut rgb = Vec::with_capacity(self.values.len() * 3);
        for &v in &self.values {
            rgb.extend_from_slice(&color(v));
        }
        png::encode_rgb(self.cols as u32, self.rows as u32, &rgb)
    }
}

/// White (0) to dark blue (1); NaN is light grey.
fn color(v: f32) -> [u8; 3] {
    if v.is_nan() {
        return [221, 221, 221];
    }
    let t = v.clamp(0.0, 1.0);
    let lerp = |a: f32, b: f32| (a + (b - a) * t).round() as u8;
    [lerp(255.0, 8.0), lerp(255.0, 48.0), lerp(255.0, 107.0)]
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Average advance of a sans-serif glyph, in ems: a conservative estimate (digits and most
/// lowercase letters are 0.5-0.56 em in common sans-serif faces) that layout and
/// [`check::check_svg`] share.
pub const EM_ADVANCE: f64 = 0.6;

/// Estimated width of `text` at `font` px.
pub fn text_width(text: &str, font: f64) -> f64 {
    text.chars().count() as f64 * font * EM_ADVANCE
}

/// `text` at the largest size up to `font` (down to 9 px) that fits `max_width`, cut with an
/// ellipsis if even 9 px is too wide: titles and legend entries never run off the canvas.
pub fn fit_text(text: &str, font: f64, max_width: f64) -> (f64, String) {
    let n = text.chars().count().max(1) as f64;
    let fitting = (max_width / (n * EM_ADVANCE)).floor();
    if fitting >= font {
        return (font, text.to_string());
    }
    if fitting >= 9.0 {
        return (fitting, text.to_string());
    }
    let keep = ((max_width / (9.0 * EM_ADVANCE)).floor() as usize).saturating_sub(1);
    let cut: String = text.chars().take(keep).collect();
    (9.0, format!("{}\u{2026}", cut.trim_end()))
}

/// A `<text>` element fitted to `max_width` (see [`fit_text`]) with extra attributes.
fn text_el(x: f64, y: f64, font: f64, max_width: f64, attrs: &str, text: &str) -> String {
    let (size, t) = fit_text(text, font, max_width);
    format!(
        "<text x=\"{x:.1}\" y=\"{y:.1}\" font-size=\"{size}\"{attrs}>{}</text>\n",
        escape(&t)
    )
}

/// A chart title at the top left: its first line at 15 px, a second line (after `\n`, e.g.
/// the workload or data source) smaller and grey underneath, each fitted to `max_width`.
fn title_els(x: f64, max_width: f64, title: &str) -> String {
    match title.split_once('\n') {
        None => text_el(x, 24.0, 15.0, max_width, "", title),
        Some((main, sub)) => {
            text_el(x, 18.0, 14.0, max_width, "", main)
                + &text_el(x, 33.0, 10.0, max_width, " fill=\"#555\"", sub)
        }
    }
}

/// A tick label of an axis whose ticks go up to `magnitude` in absolute value, `step` apart:
/// an SI prefix for large steps (`20 M`, `1.5 k`) and for axes whose every value is below
/// 0.01 (`2 µ`, not `0.0000020`), plain decimals otherwise (`0.766`); as many decimals as the
/// step needs in that unit.
pub fn si_label(v: f64, step: f64, magnitude: f64) -> String {
    let large = [(1e12, " T"), (1e9, " G"), (1e6, " M"), (1e3, " k")]
        .into_iter()
        .find(|&(d, _)| step.abs() >= d);
    let small = [(1e-3, " m"), (1e-6, " \u{b5}"), (1e-9, " n"), (1e-12, " p")]
        .into_iter()
        .find(|&(d, _)| magnitude.abs() < 1e-2 && step.abs() >= d);
    let (div, suffix) = large.or(small).unwrap_or((1.0, ""));
    let t = Ticks {
        start: v / div,
        step: step / div,
        count: 0,
    };
    let text = t.label(0);
    if text == "0" {
        text
    } else {
        format!("{text}{suffix}")
    }
}

impl Ticks {
    /// The largest absolute tick value.
    pub fn magnitude(&self) -> f64 {
        self.start.abs().max(self.end().abs())
    }

    /// The `k`-th tick with [`si_label`].
    pub fn si_label(&self, k: usize) -> String {
        si_label(self.value(k), self.step, self.magnitude())
    }
}

/// A grid of heatmap panels with a title and a legend, as an SVG document.
pub fn heatmap_grid_svg(title: &str, legend: &str, panels: &[Heatmap], columns: usize) -> String {
    let columns = columns.max(1);
    let size = 180.0;
    let (pad, head) = (20.0, 60.0);
    let rows = panels.len().div_ceil(columns).max(1);
    let width = pad + columns as f64 * (size + pad);
    let height = head + rows as f64 * (size + pad + 18.0) + 30.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    s += &text_el(pad, 28.0, 16.0, width - 2.0 * pad, "", title);
    s += &text_el(pad, 48.0, 11.0, width - 2.0 * pad, " fill=\"#444\"", legend);
    for (k, panel) in panels.iter().enumerate() {
        let p = panel.pooled(MAX_PANEL_CELLS);
        let x = pad + (k % columns) as f64 * (size + pad);
        let y = head + (k / columns) as f64 * (size + pad + 18.0);
        let aspect = p.rows as f64 / p.cols.max(1) as f64;
        let (w, h) = if aspect > 1.0 {
            (size / aspect, size)
        } else {
            (size, size * aspect)
        };
        s += &text_el(x, y + 12.0, 12.0, size, "", &panel.title);
        s += &format!(
            "<image x=\"{x}\" y=\"{}\" width=\"{w}\" height=\"{h}\" preserveAspectRatio=\"none\" \
             style=\"image-rendering:pixelated\" href=\"data:image/png;base64,{}\"/>\n\
             <rect x=\"{x}\" y=\"{}\" width=\"{w}\" height=\"{h}\" fill=\"none\" stroke=\"#888\"/>\n",
            y + 16.0,
            png::base64(&p.to_png()),
            y + 16.0
        );
    }
    s += "</svg>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_averages_and_ignores_nan() {
        let h = Heatmap {
            title: "t".into(),
            rows: 4,
            cols: 4,
            values: vec![
                1.,
                0.,
                1.,
                1., //
                0.,
                1.,
                1.,
                f32::NAN, //
                f32::NAN,
                f32::NAN,
                0.,
                0., //
                f32::NAN,
                f32::NAN,
                0.,
                1.,
            ],
        };
        let p = h.pooled(2);
        assert_eq!((p.rows, p.cols), (2, 2));
        assert_eq!(p.values[0], 0.5);
        assert_eq!(p.values[1], 1.0);
        assert!(p.values[2].is_nan());
        assert_eq!(p.values[3], 0.25);
    }

    #[test]
    fn svg_has_one_image_per_panel_and_escapes_titles() {
        let panel = Heatmap {
            title: "head <0>".into(),
            rows: 2,
            cols: 3,
            values: vec![0.0; 6],
        };
        let svg = heatmap_grid_svg("kept & pruned", "legend", &[panel.clone(), panel], 4);
        assert_eq!(svg.matches("<image").count(), 2);
        assert!(svg.contains("head &lt;0&gt;") && svg.contains("kept &amp; pruned"));
    }
}

/// One series of a scatter/line chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// `(x, y)` points, drawn in the given order when `line` is set.
    pub points: Vec<(f64, f64)>,
    /// Connect the points with a line.
    pub line: bool,
    /// With `line`, connect consecutive points by a staircase instead of a straight segment
    /// (a Pareto front's attainment boundary).
    pub step: Step,
    /// CSS color.
    pub color: String,
}

/// How a line series joins consecutive points.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Step {
    /// Straight segments.
    #[default]
    None,
    /// Down (or up) first, then across: the boundary of a front where larger is better in both.
    VerticalFirst,
    /// Across first, then down: the boundary of a front where smaller is better in both.
    HorizontalFirst,
}

/// Round axis ticks: `count + 1` values `start + k step`, `step` of the form 1, 2 or 5 times a
/// power of ten, the first at or below the data and the last at or above it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ticks {
    /// First tick.
    pub start: f64,
    /// Distance between ticks.
    pub step: f64,
    /// Intervals (ticks minus one).
    pub count: usize,
}

impl Ticks {
    /// The `k`-th tick value.
    pub fn value(&self, k: usize) -> f64 {
        self.start + k as f64 * self.step
    }

    /// The last tick.
    pub fn end(&self) -> f64 {
        self.value(self.count)
    }

    /// The `k`-th tick as text: as many decimals as the step needs, no `-0`.
    pub fn label(&self, k: usize) -> String {
        let decimals = (-self.step.log10().floor()).max(0.0) as usize;
        let v = self.value(k);
        let text = format!("{v:.decimals$}");
        if text
            .trim_start_matches('-')
            .chars()
            .all(|c| c == '0' || c == '.')
        {
            text.trim_start_matches('-').to_string()
        } else {
            text
        }
    }
}

/// Ticks for data in `lo..=hi` (finite, `lo < hi`), about `target` intervals.
pub fn nice_ticks((lo, hi): (f64, f64), target: usize) -> Ticks {
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&st| st >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag);
    let start = (lo / step + 1e-9).floor() * step;
    let count = (((hi - start) / step) - 1e-9).ceil().max(1.0) as usize;
    Ticks { start, step, count }
}

/// How the x axis maps values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XScale {
    /// Linear, round 1-2-5 ticks.
    Linear,
    /// Base-2 logarithmic, ticks at powers of two (sequence lengths, block sizes); points with
    /// x <= 0 are not drawn.
    Log2,
}

/// A scatter/line chart with axes, a legend and an optional labeled horizontal reference line.
pub fn xy_chart_svg(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    reference: Option<(f64, &str)>,
) -> String {
    xy_chart_svg_scaled(title, x_label, y_label, series, reference, XScale::Linear)
}

/// [`xy_chart_svg`] with a choice of x scale.
pub fn xy_chart_svg_scaled(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    reference: Option<(f64, &str)>,
    x_scale: XScale,
) -> String {
    xy_chart_svg_annotated(title, x_label, y_label, series, reference, x_scale, &[])
}

/// A text label for one data point (`hdp sweep` names the configurations on its Pareto front).
#[derive(Clone, Debug, PartialEq)]
pub struct Annotation {
    /// The point, in data coordinates.
    pub x: f64,
    /// The point, in data coordinates.
    pub y: f64,
    /// Its label.
    pub text: String,
}

/// [`xy_chart_svg_scaled`] with point labels: each is placed at the first of four spots
/// around its point (right-above, left-above, right-below, left-below; 10 px, then 9 px)
/// that lies inside the plot area and overlaps no label placed before it; a label with no
/// free spot is left out rather than drawn over another.
pub fn xy_chart_svg_annotated(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    reference: Option<(f64, &str)>,
    x_scale: XScale,
    annotations: &[Annotation],
) -> String {
    let tx = |x: f64| match x_scale {
        XScale::Linear => x,
        XScale::Log2 if x > 0.0 => x.log2(),
        XScale::Log2 => f64::NAN,
    };
    let (w, h, left, right, top, bottom) = (720.0, 460.0, 70.0, 190.0, 40.0, 50.0);
    let mut xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| tx(p.0)))
        .collect();
    let mut ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .collect();
    if let Some((y, _)) = reference {
        ys.push(y);
    }
    xs.retain(|v| v.is_finite());
    ys.retain(|v| v.is_finite());
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !lo.is_finite() {
            (0.0, 1.0)
        } else if hi - lo < 1e-12 {
            (lo - 0.5, hi + 0.5)
        } else {
            (lo, hi)
        }
    };
    // Axes end on round ticks (1-2-5 steps) that enclose the data.
    let yt = nice_ticks(range(&ys), 6);
    let xt = match x_scale {
        XScale::Linear => nice_ticks(range(&xs), 6),
        XScale::Log2 => {
            let (lo, hi) = range(&xs);
            let start = lo.floor();
            Ticks {
                start,
                step: 1.0,
                count: ((hi.ceil() - start) as usize).max(1),
            }
        }
    };
    let x_label_at = |k: usize| match x_scale {
        XScale::Linear => xt.si_label(k),
        XScale::Log2 => format!("{}", 2f64.powf(xt.value(k))),
    };
    let (x0, x1) = (xt.start, xt.end());
    let (y0, y1) = (yt.start, yt.end());
    let px = |x: f64| left + (tx(x) - x0) / (x1 - x0) * (w - left - right);
    // Tick positions are already on the transformed axis.
    let pt = |v: f64| left + (v - x0) / (x1 - x0) * (w - left - right);
    let py = |y: f64| h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <rect x=\"{left}\" y=\"{top}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#444\"/>\n",
        w - left - right,
        h - top - bottom
    );
    s += &title_els(left, w - left - 10.0, title);
    for k in 0..=xt.count {
        let xv = xt.value(k);
        s += &format!(
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\" class=\"tick-x\">{}</text>\n\
             <line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{top}\" y2=\"{}\" stroke=\"#eee\"/>\n",
            pt(xv),
            h - bottom + 18.0,
            x_label_at(k),
            pt(xv),
            pt(xv),
            h - bottom
        );
    }
    for k in 0..=yt.count {
        let yv = yt.value(k);
        s += &format!(
            "<text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" class=\"tick-y\">{}</text>\n\
             <line x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/>\n",
            left - 6.0,
            py(yv) + 4.0,
            yt.si_label(k),
            w - right,
            py(yv),
            py(yv)
        );
    }
    s += &text_el(
        (left + w - right) / 2.0,
        h - 12.0,
        12.0,
        w - left - right,
        " text-anchor=\"middle\"",
        x_label,
    );
    let yc = (top + h - bottom) / 2.0;
    s += &text_el(
        16.0,
        yc,
        12.0,
        h - top - bottom,
        &format!(" text-anchor=\"middle\" transform=\"rotate(-90 16 {yc:.1})\""),
        y_label,
    );
    if let Some((y, label)) = reference {
        // The line across the plot; its name goes in the legend, under the series, where no
        // data point can cover it.
        s += &format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#c00\" stroke-dasharray=\"5 4\" data-series=\"{}\"/>\n",
            w - right,
            py(y),
            py(y),
            escape(label)
        );
        let ly = top + 16.0 + 18.0 * series.len() as f64;
        s += &format!(
            "<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"#c00\" stroke-dasharray=\"5 4\"/>",
            w - right + 6.0,
            w - right + 18.0
        );
        s += &text_el(
            w - right + 22.0,
            ly + 4.0,
            11.0,
            right - 28.0,
            &format!(
                " fill=\"#c00\" class=\"legend\" data-series=\"{}\"",
                escape(label)
            ),
            label,
        );
    }
    for (k, ser) in series.iter().enumerate() {
        if ser.line && ser.points.len() > 1 {
            let drawn: Vec<(f64, f64)> = ser
                .points
                .iter()
                .copied()
                .filter(|p| tx(p.0).is_finite() && p.1.is_finite())
                .collect();
            let mut corners = Vec::with_capacity(2 * drawn.len());
            for (i, &(x, y)) in drawn.iter().enumerate() {
                if i > 0 {
                    let (x0, y0) = drawn[i - 1];
                    match ser.step {
                        Step::None => {}
                        Step::VerticalFirst => corners.push((x0, y)),
                        Step::HorizontalFirst => corners.push((x, y0)),
                    }
                }
                corners.push((x, y));
            }
            let pts: Vec<String> = corners
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            s += &format!(
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" data-series=\"{}\"/>\n",
                pts.join(" "),
                ser.color,
                escape(&ser.name)
            );
        }
        // Every measured point gets a marker, on lines too.
        for &(x, y) in ser
            .points
            .iter()
            .filter(|p| tx(p.0).is_finite() && p.1.is_finite())
        {
            s += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{}\" data-series=\"{}\"/>\n",
                px(x),
                py(y),
                ser.color,
                escape(&ser.name)
            );
        }
        let ly = top + 16.0 + 18.0 * k as f64;
        s += &format!(
            "<circle cx=\"{}\" cy=\"{ly}\" r=\"4\" fill=\"{}\"/>",
            w - right + 12.0,
            ser.color
        );
        s += &text_el(
            w - right + 22.0,
            ly + 4.0,
            11.0,
            right - 28.0,
            &format!(" class=\"legend\" data-series=\"{}\"", escape(&ser.name)),
            &ser.name,
        );
    }
    // Point labels: boxes as check::check_svg estimates them, inside the plot area.
    let mut placed: Vec<(f64, f64, f64, f64)> = Vec::new();
    for a in annotations {
        if !(tx(a.x).is_finite() && a.y.is_finite()) {
            continue;
        }
        let (cx, cy) = (px(a.x), py(a.y));
        'spot: for size in [10.0, 9.0] {
            let wid = text_width(&a.text, size);
            for (dx, dy, end) in [
                (6.0, -6.0, false),
                (-6.0, -6.0, true),
                (6.0, 6.0 + size, false),
                (-6.0, 6.0 + size, true),
            ] {
                let x = cx + dx;
                let y = cy + dy;
                let (x0, x1) = if end { (x - wid, x) } else { (x, x + wid) };
                let b = (x0, y - size, x1, y + 0.25 * size);
                let inside = b.0 >= left + 2.0
                    && b.2 <= w - right - 2.0
                    && b.1 >= top + 2.0
                    && b.3 <= h - bottom - 2.0;
                let free = placed.iter().all(|p| {
                    b.0.max(p.0) + 1.0 >= b.2.min(p.2) || b.1.max(p.1) + 1.0 >= b.3.min(p.3)
                });
                if inside && free {
                    placed.push(b);
                    s += &format!(
                        "<text x=\"{x:.1}\" y=\"{y:.1}\" font-size=\"{size}\" fill=\"#333\"{}>{}</text>\n",
                        if end { " text-anchor=\"end\"" } else { "" },
                        escape(&a.text)
                    );
                    break 'spot;
                }
            }
        }
    }
    s += "</svg>\n";
    s
}

/// Indices of the Pareto-optimal points when both coordinates are better larger: no other
/// point is at least as large in both and strictly larger in one. Sorted by x.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..points.len())
        .filter(|&i| {
            let (x, y) = points[i];
            !points
                .iter()
                .any(|&(a, b)| a >= x && b >= y && (a > x || b > y))
        })
        .collect();
    idx.sort_by(|&a, &b| points[a].0.total_cmp(&points[b].0));
    idx
}

#[cfg(test)]
mod chart_tests {
    use super::*;

    #[test]
    fn pareto_front_drops_dominated_points() {
        let pts = [(0.1, 0.9), (0.5, 0.8), (0.4, 0.7), (0.9, 0.5), (0.9, 0.4)];
        assert_eq!(pareto_front(&pts), vec![0, 1, 3]);
    }

    #[test]
    fn ticks_are_round_and_enclose_the_data() {
        for &(lo, hi) in &[
            (0.0, 1.0),
            (-70.4, 4096.0),
            (0.3767, 2.4458),
            (10017.98, 10020.1),
            (-3.0, -2.5),
            (1e-6, 3e-6),
            (0.0, 6.936e7),
        ] {
            let t = nice_ticks((lo, hi), 6);
            assert!(
                t.start <= lo + 1e-12 * lo.abs() && t.end() >= hi - 1e-12 * hi.abs(),
                "{lo} {hi} {t:?}"
            );
            assert!((2..=12).contains(&t.count), "{lo} {hi} {t:?}");
            let m = t.step / 10f64.powf(t.step.log10().floor());
            assert!(
                [1.0, 2.0, 5.0].iter().any(|x| (x - m).abs() < 1e-9),
                "step {}",
                t.step
            );
            for k in 0..=t.count {
                let label = t.label(k);
                let v: f64 = label.parse().unwrap();
                assert!(
                    (v - t.value(k)).abs() <= t.step * 1e-6,
                    "{label} vs {}",
                    t.value(k)
                );
                assert!(!label.starts_with("-0") || v != 0.0, "{label}");
                // Round: the label has no more decimals than the step needs.
                let decimals = label.split('.').nth(1).map_or(0, str::len);
                assert!(
                    decimals <= (-t.step.log10().floor()).max(0.0) as usize,
                    "{label}"
                );
            }
        }
    }

    #[test]
    fn log2_axis_ticks_are_powers_of_two() {
        let s = Series {
            name: "a".into(),
            points: vec![(128.0, 0.5), (512.0, 0.8), (4096.0, 1.2)],
            line: true,
            step: Step::None,
            color: "#000".into(),
        };
        let svg = xy_chart_svg_scaled("t", "N", "y", &[s], None, XScale::Log2);
        for n in ["128", "256", "512", "1024", "2048", "4096"] {
            assert!(svg.contains(&format!(">{n}</text>")), "tick {n} missing");
        }
        assert_eq!(svg.matches("<circle").count(), 4);
    }

    #[test]
    fn chart_draws_every_point() {
        let s = Series {
            name: "a".into(),
            points: vec![(0.0, 1.0), (1.0, 2.0)],
            line: true,
            step: Step::None,
            color: "#000".into(),
        };
        let s2 = s.clone();
        let svg = xy_chart_svg("t", "x", "y", &[s], Some((1.5, "dense")));
        // Measured points are marked on lines too (issue #14): two points + legend marker.
        assert_eq!(svg.matches("<circle").count(), 3);
        let dots = Series { line: false, ..s2 };
        let svg2 = xy_chart_svg("t", "x", "y", &[dots], None);
        assert_eq!(svg2.matches("<circle").count(), 3); // two points + legend marker
        assert!(svg.contains("<polyline") && svg.contains("dense"));
    }
}

/// Canvas of the bar charts: width, height and the left, right, top and bottom margins.
const BARS: (f64, f64, f64, f64, f64, f64) = (720.0, 420.0, 80.0, 200.0, 40.0, 50.0);

/// The frame of a bar chart: the document's opening, title, y-axis title and the y ticks
/// `yt` with their grid lines (the axis runs from 0 to `yt.end()`).
fn bar_chart_head(title: &str, y_label: &str, yt: &Ticks) -> String {
    let (w, h, left, right, top, bottom) = BARS;
    let plot_h = h - top - bottom;
    let yc = top + plot_h / 2.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    s += &title_els(left, w - left - 10.0, title);
    s += &text_el(
        16.0,
        yc,
        12.0,
        plot_h,
        &format!(" text-anchor=\"middle\" transform=\"rotate(-90 16 {yc:.1})\""),
        y_label,
    );
    for k in 0..=yt.count {
        let y = h - bottom - plot_h * yt.value(k) / yt.end();
        s += &format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" class=\"tick-y\">{}</text>\n",
            w - right,
            left - 6.0,
            y + 4.0,
            yt.si_label(k)
        );
    }
    s
}

/// A bar chart's legend: a swatch of `colors[k]` and the name of each series, right of the
/// plot.
fn bar_legend<'a>(names: impl Iterator<Item = &'a str>, colors: &[&str]) -> String {
    let (w, _, _, right, top, _) = BARS;
    let mut s = String::new();
    for (k, name) in names.enumerate() {
        let ly = top + 10.0 + 18.0 * k as f64;
        s += &format!(
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/>",
            w - right + 12.0,
            ly - 9.0,
            colors[k % colors.len()]
        );
        s += &text_el(
            w - right + 28.0,
            ly,
            11.0,
            right - 34.0,
            &format!(" class=\"legend\" data-series=\"{}\"", escape(name)),
            name,
        );
    }
    s
}

/// A grouped bar chart: for each of `groups`, one bar per series side by side (series: name
/// and one value per group, in group order), round ticks from zero, a value label on each bar.
pub fn grouped_bars_svg(
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[(String, Vec<f64>)],
) -> String {
    let (w, h, left, right, top, bottom) = BARS;
    let vmax = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1e-12);
    let yt = nice_ticks((0.0, vmax), 5);
    let ymax = yt.end();
    let plot_h = h - top - bottom;
    let slot = (w - left - right) / groups.len().max(1) as f64;
    let bar = slot * 0.8 / series.len().max(1) as f64;
    let mut s = bar_chart_head(title, y_label, &yt);
    for (g, name) in groups.iter().enumerate() {
        let x0 = left + slot * (g as f64 + 0.1);
        for (k, (sname, values)) in series.iter().enumerate() {
            let Some(&v) = values.get(g).filter(|v| v.is_finite()) else {
                continue;
            };
            let bh = v.max(0.0) / ymax * plot_h;
            let x = x0 + bar * k as f64;
            s += &format!(
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\" data-series=\"{}\"><title>{}: {v:.4}</title></rect>\n",
                h - bottom - bh,
                bar * 0.9,
                PALETTE[k % PALETTE.len()],
                escape(sname),
                escape(sname)
            );
        }
        s += &text_el(
            x0 + slot * 0.4,
            h - bottom + 16.0,
            11.0,
            slot * 0.95,
            " text-anchor=\"middle\"",
            name,
        );
    }
    s += &bar_legend(series.iter().map(|x| x.0.as_str()), &PALETTE);
    s += "</svg>\n";
    s
}

/// A stacked bar chart: one bar per entry of `bars`, each split into `segments` (name and one
/// value per bar).
pub fn stacked_bars_svg(
    title: &str,
    y_label: &str,
    bars: &[String],
    segments: &[(String, Vec<f64>)],
) -> String {
    let (w, h, left, right, top, bottom) = BARS;
    let totals: Vec<f64> = (0..bars.len())
        .map(|b| {
            segments
                .iter()
                .map(|s| s.1.get(b).copied().unwrap_or(0.0).max(0.0))
                .sum()
        })
        .collect();
    // Round ticks from 0 to at or above the tallest bar, labelled with SI prefixes.
    let yt = nice_ticks(
        (0.0, totals.iter().copied().fold(0.0, f64::max).max(1e-12)),
        5,
    );
    let ymax = yt.end();
    let plot_h = h - top - bottom;
    let slot = (w - left - right) / bars.len().max(1) as f64;
    // Colour-blind-safe (Okabe-Ito, then grey shades).
    let palette = [
        "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
        "#999999", "#666666",
    ];
    let mut s = bar_chart_head(title, y_label, &yt);
    for (b, name) in bars.iter().enumerate() {
        let x = left + slot * (b as f64 + 0.2);
        let mut y = h - bottom;
        for (k, seg) in segments.iter().enumerate() {
            let v = seg.1.get(b).copied().unwrap_or(0.0).max(0.0);
            let bh = v / ymax * plot_h;
            y -= bh;
            s += &format!(
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\" data-series=\"{}\"><title>{}: {v:.4e}</title></rect>\n",
                slot * 0.6,
                palette[k % palette.len()],
                escape(&seg.0),
                escape(&seg.0)
            );
        }
        s += &text_el(
            x + slot * 0.3,
            h - bottom + 16.0,
            12.0,
            slot * 0.95,
            " text-anchor=\"middle\"",
            name,
        );
    }
    s += &bar_legend(segments.iter().map(|x| x.0.as_str()), &palette);
    s += "</svg>\n";
    s
}

#[cfg(test)]
mod bar_tests {
    #[test]
    fn one_rect_per_segment_and_bar() {
        let svg = super::stacked_bars_svg(
            "t",
            "cycles",
            &["a".into(), "b".into()],
            &[("x".into(), vec![1.0, 2.0]), ("y".into(), vec![3.0, 0.0])],
        );
        assert_eq!(svg.matches("<rect x=").count(), 4 + 2); // 2 bars x 2 segments + 2 legend boxes
    }
}

#[cfg(test)]
mod figure_checks {
    //! Every chart function, on the data shapes hdp feeds it and on adversarial ones (long
    //! titles and names, wide and tiny ranges, many series), passes [`check::check_svg`].
    use super::*;

    fn series(name: &str, pts: &[(f64, f64)], line: bool, k: usize) -> Series {
        Series {
            name: name.into(),
            points: pts.to_vec(),
            line,
            step: if name == "Pareto front" {
                Step::VerticalFirst
            } else {
                Step::None
            },
            color: PALETTE[k % PALETTE.len()].into(),
        }
    }

    #[test]
    fn xy_charts_read_well() {
        let long = "rt-sentiment: accuracy vs sparsity (12,808 texts; dense cached; top-k, top-p, mean-max, calibrated and centred variants)";
        type Case<'a> = (Vec<Series>, XScale, Option<(f64, &'a str)>);
        let cases: Vec<Case> = vec![
            (
                vec![
                    series(
                        "avx512-vnni",
                        &[(128.0, 0.6), (512.0, 1.2), (2048.0, 1.5), (4096.0, 1.7)],
                        true,
                        0,
                    ),
                    series(
                        "avx2",
                        &[(128.0, 0.5), (512.0, 0.75), (2048.0, 0.82)],
                        true,
                        1,
                    ),
                    series(
                        "PyTorch SDPA (torch 2.15, same machine and threads)",
                        &[(512.0, 1.1)],
                        false,
                        2,
                    ),
                ],
                XScale::Log2,
                Some((1.0, "dense = 1x")),
            ),
            (
                vec![series(
                    "avx512-vnni",
                    &[(512.0, 0.4), (2048.0, 0.9)],
                    true,
                    0,
                )],
                XScale::Log2,
                Some((1.0, "dense")),
            ),
            (
                vec![
                    series(
                        "Pareto front",
                        &[(0.5, 0.7669), (0.686, 0.7626), (0.8, 0.758)],
                        true,
                        7,
                    ),
                    series("top-k", &[(0.49, 0.7658), (0.686, 0.7626)], false, 0),
                    series("mean-max", &[(0.52, 0.7615), (0.8, 0.758)], false, 1),
                ],
                XScale::Linear,
                Some((0.7669, "dense")),
            ),
            (
                vec![series(
                    "design points",
                    &[(10017.98, 6.9e7), (10020.1, 1.2e7), (10019.0, 3.3e7)],
                    false,
                    0,
                )],
                XScale::Linear,
                None,
            ),
            (
                vec![series("tiny", &[(1e-6, 3e-6), (2e-6, 1e-6)], true, 0)],
                XScale::Linear,
                None,
            ),
        ];
        for (ser, scale, reference) in cases {
            let svg = xy_chart_svg_scaled(
                long,
                "effective block sparsity (share of valid blocks not computed)",
                "accuracy",
                &ser,
                reference,
                scale,
            );
            assert_eq!(check::check_svg(&svg), Vec::<String>::new(), "{svg}");
        }
    }

    #[test]
    fn stacked_bars_read_well() {
        let names = [
            "int_engine",
            "pruning_unit",
            "frac_engine",
            "softmax_unit",
            "sv_engine",
            "sram",
            "dram",
            "score_engine (dense)",
        ];
        let segs: Vec<(String, Vec<f64>)> = names
            .iter()
            .enumerate()
            .map(|(k, n)| {
                (
                    n.to_string(),
                    vec![1.3e7 * k as f64, if k == 7 { 6.936e7 } else { 0.0 }],
                )
            })
            .collect();
        let svg = stacked_bars_svg(
            "Busy cycles per unit: HDPA-edge vs dense-edge\ntrace /some/long/path/to/a/trace-file-from-hdp-eval.json, 12 layers",
            "busy cycles (units overlap in the pipeline)",
            &["HDPA-edge".into(), "dense-edge (same multipliers)".into()],
            &segs,
        );
        assert_eq!(check::check_svg(&svg), Vec::<String>::new(), "{svg}");
        assert!(svg.contains(">400 M</text>"), "{svg}");
    }

    #[test]
    fn point_labels_never_collide_or_leave_the_plot() {
        let pts: Vec<(f64, f64)> = (0..12)
            .map(|k| (0.5 + 0.03 * k as f64, 0.766 - 0.0007 * k as f64))
            .collect();
        let notes: Vec<Annotation> = pts
            .iter()
            .enumerate()
            .map(|(k, &(x, y))| Annotation {
                x,
                y,
                text: format!("keep 0.{k} b=1 8:3 approx"),
            })
            .collect();
        let svg = xy_chart_svg_annotated(
            "t",
            "x",
            "y",
            &[series("Pareto front", &pts, true, 7)],
            Some((0.7669, "dense")),
            XScale::Linear,
            &notes,
        );
        assert_eq!(check::check_svg(&svg), Vec::<String>::new(), "{svg}");
        let drawn = notes
            .iter()
            .filter(|n| svg.contains(&format!(">{}</text>", n.text)))
            .count();
        assert!(drawn >= 3, "only {drawn} labels placed");
    }

    #[test]
    fn grouped_bars_read_well() {
        let groups: Vec<String> = [
            "512-token passages, 1 thread",
            "512-token passages, 2 threads",
            "short sentences, 1 thread",
            "short sentences, 2 threads",
        ]
        .iter()
        .map(|g| g.to_string())
        .collect();
        let series = vec![
            (
                "sentence-transformers (torch 2.15)".to_string(),
                vec![7.1, 12.4, 118.0, 222.0],
            ),
            (
                "hdp embed, dense".to_string(),
                vec![9.0, 15.2, 130.0, f64::NAN],
            ),
            ("hdp embed, HDP".to_string(), vec![12.2, 20.9, 126.0, 240.0]),
        ];
        let svg = grouped_bars_svg(
            "Texts per second\nall-MiniLM-L6-v2, Zen 4",
            "texts per second",
            &groups,
            &series,
        );
        assert_eq!(check::check_svg(&svg), Vec::<String>::new(), "{svg}");
        // A NaN value draws no bar.
        assert_eq!(
            svg.matches("data-series=\"hdp embed, dense\"><title>")
                .count(),
            3
        );
    }

    #[test]
    fn heatmaps_read_well() {
        let panel = |t: &str| Heatmap {
            title: t.into(),
            rows: 4,
            cols: 4,
            values: vec![0.5; 16],
        };
        let panels: Vec<Heatmap> = (0..6)
            .map(|k| panel(&format!("layer {k} head {k}: 71.3% kept of valid blocks")))
            .collect();
        let svg = heatmap_grid_svg(
            "Kept blocks, all-MiniLM-L6-v2, one sentence of the Rotten Tomatoes test split, top-k 0.3",
            "white = kept, black = pruned, grey = masked (padding or causal); one panel per layer and head",
            &panels,
            3,
        );
        assert_eq!(check::check_svg(&svg), Vec::<String>::new(), "{svg}");
    }

    #[test]
    fn fit_text_shrinks_then_cuts() {
        assert_eq!(fit_text("short", 15.0, 500.0), (15.0, "short".into()));
        let (size, t) = fit_text(&"x".repeat(40), 15.0, 300.0);
        assert!((9.0..15.0).contains(&size) && t.len() == 40);
        let (size, t) = fit_text(&"y".repeat(500), 15.0, 300.0);
        assert_eq!(size, 9.0);
        assert!(t.ends_with('\u{2026}') && text_width(&t, 9.0) <= 300.0);
        assert_eq!(si_label(2e7, 1e7, 4e7), "20 M");
        assert_eq!(si_label(0.0, 1e7, 4e7), "0");
        assert_eq!(si_label(1500.0, 500.0, 2000.0), "1500");
        assert_eq!(si_label(0.766, 0.002, 0.768), "0.766");
        assert_eq!(si_label(2e-6, 1e-6, 3e-6), "2 \u{b5}");
        assert_eq!(si_label(0.25, 0.05, 0.5), "0.25");
    }
}
