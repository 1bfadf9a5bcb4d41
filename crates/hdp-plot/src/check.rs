//! Checks of a written SVG figure that a reader would make at a glance (issue #14), for tests
//! of every figure hdp draws: every text fits on the canvas (widths estimated with
//! [`crate::EM_ADVANCE`], the estimate the layout uses), no two texts overlap, axis tick
//! labels (`class="tick-x"`/`"tick-y"`) are round numbers at even steps (1, 2 or 5 times a power
//! of ten, or powers of two on a log axis; SI prefixes allowed), and every legend entry
//! (`class="legend" data-series="NAME"`) has marks of that series (`data-series="NAME"`) drawn.

/// One `<text>` element.
#[derive(Clone, Debug)]
struct Text {
    x: f64,
    y: f64,
    size: f64,
    anchor: String,
    rotated: bool,
    class: String,
    series: Option<String>,
    content: String,
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let end = tag[start..].find('"')? + start;
    Some(tag[start..end].to_string())
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

fn texts(svg: &str) -> Vec<Text> {
    let mut out = Vec::new();
    let mut rest = svg;
    while let Some(i) = rest.find("<text") {
        rest = &rest[i..];
        let Some(close) = rest.find('>') else { break };
        let tag = &rest[..close];
        let Some(end) = rest.find("</text>") else {
            break;
        };
        let num = |n: &str| attr(tag, n).and_then(|v| v.parse::<f64>().ok());
        out.push(Text {
            x: num("x").unwrap_or(0.0),
            y: num("y").unwrap_or(0.0),
            size: num("font-size").unwrap_or(16.0),
            anchor: attr(tag, "text-anchor").unwrap_or_else(|| "start".into()),
            rotated: attr(tag, "transform").is_some_and(|t| t.contains("rotate(-90")),
            class: attr(tag, "class").unwrap_or_default(),
            series: attr(tag, "data-series").map(|s| unescape(&s)),
            content: unescape(&rest[close + 1..end]),
        });
        rest = &rest[end..];
    }
    out
}

/// `(x0, y0, x1, y1)` of a text's estimated box.
fn bbox(t: &Text) -> (f64, f64, f64, f64) {
    let len = crate::text_width(&t.content, t.size);
    let (a, b) = match t.anchor.as_str() {
        "middle" => (-len / 2.0, len / 2.0),
        "end" => (-len, 0.0),
        _ => (0.0, len),
    };
    if t.rotated {
        // rotate(-90) about (x, y): the text runs upwards from y.
        (t.x - t.size, t.y - b, t.x + 0.25 * t.size, t.y - a)
    } else {
        (t.x + a, t.y - t.size, t.x + b, t.y + 0.25 * t.size)
    }
}

/// A tick label's value (SI prefixes p, n, µ, m, k, M, G, T after a space).
fn tick_value(label: &str) -> Option<f64> {
    let l = label.trim();
    let (num, mul) = match l.rsplit_once(' ') {
        Some((n, "k")) => (n, 1e3),
        Some((n, "M")) => (n, 1e6),
        Some((n, "G")) => (n, 1e9),
        Some((n, "T")) => (n, 1e12),
        Some((n, "m")) => (n, 1e-3),
        Some((n, "\u{b5}")) => (n, 1e-6),
        Some((n, "n")) => (n, 1e-9),
        Some((n, "p")) => (n, 1e-12),
        _ => (l, 1.0),
    };
    num.parse::<f64>().ok().map(|v| v * mul)
}

fn round_step(step: f64) -> bool {
    let m = step / 10f64.powf(step.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .any(|x| (x - m).abs() < 1e-6 * x)
}

/// The problems a reader would see in `svg`, in words (empty: none).
pub fn check_svg(svg: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(head) = svg.find("<svg").map(|i| &svg[i..]) else {
        return vec!["not an SVG document".into()];
    };
    let tag = &head[..head.find('>').unwrap_or(head.len())];
    let (w, h) = match (
        attr(tag, "width").and_then(|v| v.parse::<f64>().ok()),
        attr(tag, "height").and_then(|v| v.parse::<f64>().ok()),
    ) {
        (Some(w), Some(h)) => (w, h),
        _ => return vec!["the <svg> element has no numeric width and height".into()],
    };
    let all = texts(svg);
    for t in &all {
        let (x0, y0, x1, y1) = bbox(t);
        if x0 < -0.5 || y0 < -0.5 || x1 > w + 0.5 || y1 > h + 0.5 {
            problems.push(format!(
                "text {:?} ({x0:.0}..{x1:.0}, {y0:.0}..{y1:.0}) runs off the {w} x {h} canvas",
                t.content
            ));
        }
    }
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            let (a0, a1, a2, a3) = bbox(a);
            let (b0, b1, b2, b3) = bbox(b);
            // Overlap by more than a pixel in both directions.
            if a0.max(b0) + 1.0 < a2.min(b2) && a1.max(b1) + 1.0 < a3.min(b3) {
                problems.push(format!("texts {:?} and {:?} overlap", a.content, b.content));
            }
        }
    }
    for axis in ["tick-x", "tick-y"] {
        let labels: Vec<&Text> = all.iter().filter(|t| t.class == axis).collect();
        let values: Vec<Option<f64>> = labels.iter().map(|t| tick_value(&t.content)).collect();
        if let Some(bad) = labels.iter().zip(&values).find(|x| x.1.is_none()) {
            problems.push(format!("{axis} label {:?} is not a number", bad.0.content));
            continue;
        }
        let v: Vec<f64> = values.into_iter().flatten().collect();
        if v.len() < 2 {
            if !labels.is_empty() {
                problems.push(format!("{axis}: fewer than two ticks"));
            }
            continue;
        }
        let steps: Vec<f64> = v.windows(2).map(|p| p[1] - p[0]).collect();
        let even = steps
            .iter()
            .all(|s| (s - steps[0]).abs() <= 1e-6 * steps[0].abs().max(1e-300));
        let doubling = v
            .iter()
            .all(|&x| x > 0.0 && (x.log2() - x.log2().round()).abs() < 1e-9)
            && v.windows(2).all(|p| (p[1] / p[0] - 2.0).abs() < 1e-9);
        if !(doubling || even && steps[0] > 0.0 && round_step(steps[0])) {
            problems.push(format!(
                "{axis} ticks {:?} are not round steps",
                labels
                    .iter()
                    .map(|t| t.content.as_str())
                    .collect::<Vec<_>>()
            ));
        }
    }
    for t in all.iter().filter(|t| t.class == "legend") {
        let Some(name) = &t.series else {
            problems.push(format!("legend entry {:?} names no series", t.content));
            continue;
        };
        let needle = format!("data-series=\"{}\"", crate::escape(name));
        let marks = svg.matches(&needle).count();
        // The legend's own text carries the attribute once.
        if marks < 2 {
            problems.push(format!("legend entry {name:?} has no marks drawn"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catches_what_a_reader_would_see() {
        let svg = "<svg width=\"100\" height=\"50\"><text x=\"90\" y=\"20\" font-size=\"12\">too long</text>\
                   <text x=\"5\" y=\"40\" font-size=\"10\" class=\"tick-x\">-70.400</text>\
                   <text x=\"50\" y=\"40\" font-size=\"10\" class=\"tick-x\">1020.800</text>\
                   <text x=\"5\" y=\"12\" font-size=\"10\" class=\"legend\" data-series=\"Pareto front\">P</text></svg>";
        let p = check_svg(svg);
        assert!(p.iter().any(|x| x.contains("runs off")), "{p:?}");
        assert!(p.iter().any(|x| x.contains("not round")), "{p:?}");
        assert!(p.iter().any(|x| x.contains("no marks")), "{p:?}");
        let ok = "<svg width=\"300\" height=\"50\">\
                  <text x=\"10\" y=\"40\" font-size=\"10\" class=\"tick-x\">0</text>\
                  <text x=\"60\" y=\"40\" font-size=\"10\" class=\"tick-x\">20 M</text>\
                  <text x=\"110\" y=\"40\" font-size=\"10\" class=\"tick-x\">40 M</text>\
                  <circle data-series=\"a\"/><text x=\"150\" y=\"12\" font-size=\"10\" class=\"legend\" data-series=\"a\">a</text></svg>";
        assert_eq!(check_svg(ok), Vec::<String>::new());
        let overlap =
            "<svg width=\"300\" height=\"50\"><text x=\"10\" y=\"20\" font-size=\"10\">abc</text>\
                       <text x=\"12\" y=\"22\" font-size=\"10\">def</text></svg>";
        assert!(check_svg(overlap).iter().any(|x| x.contains("overlap")));
        let log2 = "<svg width=\"300\" height=\"50\"><text x=\"10\" y=\"40\" font-size=\"10\" class=\"tick-x\">128</text>\
                    <text x=\"60\" y=\"40\" font-size=\"10\" class=\"tick-x\">256</text>\
                    <text x=\"110\" y=\"40\" font-size=\"10\" class=\"tick-x\">512</text></svg>";
        assert_eq!(check_svg(log2), Vec::<String>::new());
    }
}
