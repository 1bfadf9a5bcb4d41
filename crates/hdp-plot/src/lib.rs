//! Dependency-free plots for hdp reports, written as self-contained SVG files: heatmap grids
//! (kept blocks per head) embed exact pixel images as PNG, so a 512 x 512 block mask stays a few
//! hundred kilobytes instead of a quarter-million SVG rectangles.

#![warn(missing_docs)]

pub mod png;

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
         font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{pad}\" y=\"28\" font-size=\"16\">{}</text>\n\
         <text x=\"{pad}\" y=\"48\" font-size=\"11\" fill=\"#444\">{}</text>\n",
        escape(title),
        escape(legend)
    );
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
        s += &format!(
            "<text x=\"{x}\" y=\"{}\" font-size=\"12\">{}</text>\n\
             <image x=\"{x}\" y=\"{}\" width=\"{w}\" height=\"{h}\" preserveAspectRatio=\"none\" \
             style=\"image-rendering:pixelated\" href=\"data:image/png;base64,{}\"/>\n\
             <rect x=\"{x}\" y=\"{}\" width=\"{w}\" height=\"{h}\" fill=\"none\" stroke=\"#888\"/>\n",
            y + 12.0,
            escape(&panel.title),
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
