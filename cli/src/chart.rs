//! A small hand-written SVG line chart: throughput against batch size, one line per series.

use std::fmt::Write;

/// One line of the chart.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// (batch size, increments/s).
    pub points: Vec<(f64, f64)>,
    /// Baselines are drawn dashed.
    pub dashed: bool,
}

const W: f64 = 760.0;
const H: f64 = 440.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 220.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Axis label for a count: 1200 → "1.2k".
fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// The chart as an SVG document. The x axis is logarithmic when the batch sizes span more
/// than a factor of 10; the y axis when the throughputs span more than a factor of 50
/// (otherwise it starts at 0).
pub fn throughput_svg(series: &[Series]) -> String {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (xmin, xmax) = xs.fold((f64::INFINITY, 0.0f64), |(a, b), x| (a.min(x), b.max(x)));
    let ys = || series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let ymax = ys().fold(0.0f64, f64::max).max(1.0) * 1.1;
    let ymin_pos = ys().filter(|y| *y > 0.0).fold(f64::INFINITY, f64::min);
    // Baselines can be 1000x apart: a log axis keeps every line readable.
    let ylog = ymin_pos.is_finite() && ymax / ymin_pos > 50.0;
    let (ylo, yhi) = if ylog {
        (
            10f64.powf(ymin_pos.log10().floor()),
            10f64.powf(ymax.log10().ceil()),
        )
    } else {
        (0.0, ymax)
    };
    let (xmin, xmax) = if xmin.is_finite() && xmax > xmin {
        (xmin, xmax)
    } else if xmin.is_finite() {
        (xmin * 0.5, xmin * 1.5)
    } else {
        (1.0, 10.0)
    };
    let log = xmax / xmin.max(1e-9) > 10.0 && xmin > 0.0;
    let fx = |x: f64| {
        let t = if log {
            (x.ln() - xmin.ln()) / (xmax.ln() - xmin.ln())
        } else {
            (x - xmin) / (xmax - xmin)
        };
        LEFT + t * (W - LEFT - RIGHT)
    };
    let fy = |y: f64| {
        let t = if ylog {
            (y.max(ylo).log10() - ylo.log10()) / (yhi.log10() - ylo.log10())
        } else {
            y / yhi
        };
        H - BOTTOM - t * (H - TOP - BOTTOM)
    };

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">Throughput vs flush batch size</text>"#,
        (W - RIGHT + LEFT) / 2.0
    );
    // Axes.
    let (x0, x1, y0, y1) = (LEFT, W - RIGHT, H - BOTTOM, TOP);
    let _ = writeln!(
        s,
        r#"<path d="M{x0} {y1} L{x0} {y0} L{x1} {y0}" stroke="black" fill="none"/>"#
    );
    let yticks: Vec<f64> = if ylog {
        let (a, b) = (ylo.log10() as i32, yhi.log10() as i32);
        (a..=b).map(|e| 10f64.powi(e)).collect()
    } else {
        (0..=5).map(|i| ymax / 1.1 * f64::from(i) / 5.0).collect()
    };
    for v in yticks {
        let y = fy(v);
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            x0 - 6.0,
            y + 4.0,
            short(v)
        );
    }
    let mut ticks: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    for t in ticks {
        let x = fx(t);
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{}" stroke="black"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
            y0 + 5.0,
            y0 + 20.0,
            short(t)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">batch size (flush_dirty_entries{})</text>"#,
        (x0 + x1) / 2.0,
        H - 15.0,
        if log { ", log scale" } else { "" }
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">increments / s{}</text>"#,
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        if ylog { " (log scale)" } else { "" }
    );
    // Lines and legend.
    for (i, ser) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let dash = if ser.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let mut pts = ser.points.clone();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", fx(*x), fy(*y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            path.join(" ")
        );
        for (x, y) in &pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                fx(*x),
                fy(*y)
            );
        }
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            W - RIGHT + 15.0,
            W - RIGHT + 40.0,
            W - RIGHT + 46.0,
            ly + 4.0,
            esc(&ser.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_one_line_per_series_and_escapes_names() {
        let svg = throughput_svg(&[
            Series {
                name: "a<b".into(),
                points: vec![(100.0, 10.0), (10_000.0, 50.0)],
                dashed: false,
            },
            Series {
                name: "base".into(),
                points: vec![(100.0, 5.0), (10_000.0, 5.0)],
                dashed: true,
            },
        ]);
        assert!(svg.starts_with("<svg "));
        assert!(svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("stroke-dasharray").count(), 2); // line + legend
        assert!(svg.contains("a&lt;b"));
        assert!(svg.contains("log scale"));
        assert!(!svg.contains("increments / s (log scale)"));
        let wide = throughput_svg(&[Series {
            name: "w".into(),
            points: vec![(1.0, 100.0), (2.0, 1_000_000.0)],
            dashed: false,
        }]);
        assert!(wide.contains("increments / s (log scale)"));
        // Decade ticks 100 .. 10M, every point inside the plot.
        assert!(wide.contains(">100<") && wide.contains(">10.0M<"));
    }
}
