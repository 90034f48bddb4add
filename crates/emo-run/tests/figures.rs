//! Figures: each writes a PNG and an SVG of the announced size with its titles and legend; bad input is an
//! error; a missing font fails the PNG only, after the SVG was written. Needs the font from scripts/setup.sh.
use std::path::{Path, PathBuf};

use emo_run::figures::{
    color_for, default_font_path, sublayer_labels, BarGroup, Figures, HeatmapPanel, LinesPanel, ScatterPanel, Series, Written, EMOTION_COLORS,
    EMOTION_NAMES,
};
use emo_run::RunError;

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// The texts of an SVG's `<text>` elements, trimmed.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text").skip(1).filter_map(|t| Some(t[t.find('>')? + 1..t.find("</text>")?].trim().to_string())).collect()
}

/// Whether an SVG shows `text` as one of its `<text>` elements.
fn shows(svg: &str, text: &str) -> bool {
    svg_texts(svg).iter().any(|t| t == text)
}

/// A fresh, empty folder for one test, removed when the test passes (kept when it fails, or when
/// `EMO_KEEP_FIGURES` is set, to look at).
struct OutDir(PathBuf);

impl std::ops::Deref for OutDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("EMO_KEEP_FIGURES").is_some() {
            eprintln!("figures kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn out_dir(name: &str) -> OutDir {
    let dir = std::env::temp_dir().join(format!("emo-figures-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    OutDir(dir)
}

fn require_font() {
    let font = default_font_path();
    assert!(font.is_file(), "font {} missing: run `bash scripts/setup.sh` first", font.display());
}

/// Checks both files and returns the SVG's text.
fn check(written: &Written, base: &Path) -> String {
    assert_eq!(written.png, PathBuf::from(format!("{}.png", base.display())));
    assert_eq!(written.svg, PathBuf::from(format!("{}.svg", base.display())));
    let png = std::fs::read(&written.png).unwrap();
    assert_eq!(png[..8], PNG_SIGNATURE, "{} is not a PNG", written.png.display());
    assert_eq!(&png[12..16], b"IHDR");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (written.width, written.height));
    assert!(width >= 300 && height >= 300, "{width}x{height}");
    // Not a blank image: a white canvas of this size compresses to about 1 kB.
    assert!(png.len() > 3000, "PNG only {} bytes", png.len());
    let svg = std::fs::read_to_string(&written.svg).unwrap();
    assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"), "{}", &svg[..svg.len().min(80)]);
    assert!(svg.contains(&format!("width=\"{width}\"")) && svg.contains(&format!("height=\"{height}\"")));
    svg
}

/// Six clusters of points, one per emotion.
fn clusters(seed: f64, per_class: usize) -> ScatterPanel {
    let mut points = Vec::new();
    let mut classes = Vec::new();
    for c in 0..6 {
        let angle = c as f64 * std::f64::consts::TAU / 6.0 + seed;
        for k in 0..per_class {
            let r = 0.6 * ((k as f64 * 1.7 + seed).sin());
            let s = 0.6 * ((k as f64 * 2.3 + c as f64).cos());
            points.push((5.0 * angle.cos() + r, 5.0 * angle.sin() * (1.0 + seed) + s));
            classes.push(c);
        }
    }
    ScatterPanel { title: String::new(), points, classes }
}

#[test]
fn scatter_grid_writes_png_and_svg() {
    require_font();
    let dir = out_dir("scatter");
    let titles = ["Layer 0 · states", "Layer 9 · states", "Layer 12 · states", "Layer 27 · states"];
    let mut panels: Vec<ScatterPanel> =
        titles.iter().enumerate().map(|(i, t)| ScatterPanel { title: t.to_string(), ..clusters(i as f64 * 0.3, 25) }).collect();
    for (i, layer) in [0, 9, 12, 27].iter().enumerate() {
        panels.push(ScatterPanel { title: format!("Layer {layer} · emotion vectors"), ..clusters(1.0 + i as f64, 8) });
    }
    let base = dir.join("fig2_pca");
    let written = Figures::default().scatter_grid(&base, &panels, &EMOTION_NAMES, 4).unwrap();
    let svg = check(&written, &base);
    for t in titles.iter().map(|t| t.to_string()).chain(["Layer 27 · emotion vectors".to_string()]) {
        assert!(shows(&svg, &t), "SVG lacks title {t}");
    }
    for name in EMOTION_NAMES {
        assert!(shows(&svg, name), "SVG lacks legend entry {name}");
    }
    assert!(shows(&svg, "PCA component 1") && shows(&svg, "PCA component 2"));
    // Two rows of four panels.
    let single = Figures::default().scatter(dir.join("one"), &panels[0], &EMOTION_NAMES).unwrap();
    assert_eq!(written.width, 4 * single.width);
    assert!(written.height > single.height);
}

#[test]
fn heatmap_grid_writes_png_and_svg() {
    require_font();
    let dir = out_dir("heatmap");
    let layers = 24;
    let labels = sublayer_labels(layers);
    let n = labels.len();
    let panels: Vec<HeatmapPanel> = EMOTION_NAMES
        .iter()
        .enumerate()
        .map(|(e, name)| HeatmapPanel {
            title: name.to_string(),
            values: (0..n).map(|r| (0..n).map(|c| if r == c { 1.0 } else { ((r * c + e) as f64 * 0.37).sin() * 0.8 }).collect()).collect(),
        })
        .collect();
    let base = dir.join("fig6_cosine");
    let written = Figures::default().heatmap_grid(&base, "Cosine similarity of sublayer directions", &panels, &labels, 3, Some((-1.0, 1.0))).unwrap();
    let svg = check(&written, &base);
    assert!(shows(&svg, "Cosine similarity of sublayer directions"));
    for name in EMOTION_NAMES {
        assert!(shows(&svg, name), "SVG lacks panel title {name}");
    }
    // Tick labels on both axes of each panel, thinned out so that they do not crowd.
    let ticks = svg_texts(&svg).into_iter().filter(|t| labels.contains(t)).count();
    assert!(ticks >= 6 * 2 * 4 && ticks < 6 * 2 * n, "{ticks} tick labels: {:?}", svg_texts(&svg));
    assert!(shows(&svg, "A0") && shows(&svg, "A12"), "tick labels: {:?}", svg_texts(&svg));
    assert!(shows(&svg, "-1") && shows(&svg, "0") && shows(&svg, "1"), "colour bar range");

    // One panel, automatic range (symmetric about zero for signed values), numeric ticks.
    let small = HeatmapPanel { title: "tiny".into(), values: vec![vec![0.5, -0.25], vec![-0.25, 2.0]] };
    let base = dir.join("one");
    let written = Figures::default().heatmap(&base, &small, &[], None).unwrap();
    let svg = check(&written, &base);
    let texts = svg_texts(&svg);
    for t in ["tiny", "0", "1", "2", "-2"] {
        assert!(texts.iter().any(|x| x == t), "{t} not in {texts:?}");
    }
    // Values of one sign: their min..max.
    let positive = HeatmapPanel { title: "positive".into(), values: vec![vec![0.5, 1.0], vec![1.0, 2.0]] };
    let svg = check(&Figures::default().heatmap(dir.join("pos"), &positive, &[], None).unwrap(), &dir.join("pos"));
    for t in ["0.5", "1.25", "2"] {
        assert!(shows(&svg, t), "{t} not in {:?}", svg_texts(&svg));
    }
}

#[test]
fn lines_writes_png_and_svg() {
    require_font();
    let dir = out_dir("lines");
    let series: Vec<Series> = ["resid_mid", "resid_post"]
        .iter()
        .enumerate()
        .map(|(k, name)| Series::new(*name, (0..24).map(|l| (l as f64, 0.3 + 0.65 * (1.0 - (-(l as f64) / (4.0 + k as f64)).exp()))).collect()))
        .collect();
    let base = dir.join("probe_f1");
    let written = Figures::default().lines(&base, "Probe F1 per layer", "layer", "macro F1", &series, Some((0.0, 1.0))).unwrap();
    let svg = check(&written, &base);
    for t in ["Probe F1 per layer", "resid_mid", "resid_post", "layer", "macro F1", "0", "1"] {
        assert!(shows(&svg, t), "SVG lacks {t}");
    }
    // Automatic y range and a single point.
    let one = [Series::new("only", vec![(3.0, 7.0)])];
    let written = Figures::default().lines(dir.join("auto"), "single point", "x", "y", &one, None).unwrap();
    check(&written, &dir.join("auto"));
}

#[test]
fn grouped_bars_writes_png_and_svg() {
    require_font();
    let dir = out_dir("bars");
    let groups = vec![
        BarGroup { name: "prompting".into(), values: vec![62.0, 71.5, 88.0, 40.0, 55.0, 33.3] },
        BarGroup { name: "steering".into(), values: vec![95.0, 99.0, 100.0, 91.0, 93.0, 87.5] },
    ];
    let base = dir.join("success");
    let written = Figures::default().grouped_bars(&base, "Expression success rate", "success (%)", &EMOTION_NAMES, &groups, None).unwrap();
    let svg = check(&written, &base);
    for t in ["Expression success rate", "prompting", "steering", "success (%)", "100"] {
        assert!(shows(&svg, t), "SVG lacks {t}");
    }
    for name in EMOTION_NAMES {
        assert!(shows(&svg, name), "SVG lacks category {name}");
    }
    assert!(shows(&svg, "88") && shows(&svg, "33"), "value labels: {:?}", svg_texts(&svg));
    // Values beyond 100 and below 0 widen the axis.
    let wide = [BarGroup { name: "delta".into(), values: vec![-20.0, 130.0] }];
    let written = Figures::default().grouped_bars(dir.join("wide"), "wide", "change (%)", &["a", "b"], &wide, None).unwrap();
    check(&written, &dir.join("wide"));
}

#[test]
fn bad_input_is_an_error() {
    let dir = out_dir("bad");
    let base = dir.join("x");
    let invalid = |r: emo_run::Result<Written>| match r {
        Err(RunError::Invalid(msg)) => msg,
        other => panic!("expected Invalid, got {other:?}"),
    };
    let names = ["a", "b"];
    let ok_panel = ScatterPanel { title: "p".into(), points: vec![(0.0, 1.0), (1.0, 0.0)], classes: vec![0, 1] };
    invalid(Figures::default().scatter_grid(&base, &[], &names, 2));
    invalid(Figures::default().scatter_grid(&base, std::slice::from_ref(&ok_panel), &names, 0));
    invalid(Figures::default().scatter(&base, &ok_panel, &[]));
    invalid(Figures::default().scatter(&base, &ScatterPanel { title: "e".into(), ..Default::default() }, &names));
    invalid(Figures::default().scatter(&base, &ScatterPanel { classes: vec![0], ..ok_panel.clone() }, &names));
    invalid(Figures::default().scatter(&base, &ScatterPanel { classes: vec![0, 2], ..ok_panel.clone() }, &names));
    let msg = invalid(Figures::default().scatter(&base, &ScatterPanel { points: vec![(0.0, f64::NAN), (1.0, 1.0)], ..ok_panel.clone() }, &names));
    assert!(msg.contains("NaN"), "{msg}");

    let sq = HeatmapPanel { title: "h".into(), values: vec![vec![0.0, 1.0], vec![1.0, 0.0]] };
    invalid(Figures::default().heatmap_grid(&base, "t", &[], &[], 1, None));
    invalid(Figures::default().heatmap(&base, &HeatmapPanel { title: "e".into(), values: vec![] }, &[], None));
    invalid(Figures::default().heatmap(&base, &HeatmapPanel { values: vec![vec![0.0, 1.0], vec![1.0]], ..sq.clone() }, &[], None));
    invalid(Figures::default().heatmap(&base, &HeatmapPanel { values: vec![vec![0.0, 1.0]], ..sq.clone() }, &[], None));
    invalid(Figures::default().heatmap(&base, &HeatmapPanel { values: vec![vec![0.0, f64::NAN], vec![1.0, 0.0]], ..sq.clone() }, &[], None));
    invalid(Figures::default().heatmap(&base, &sq, &sublayer_labels(2), None)); // 4 labels for 2 rows
    invalid(Figures::default().heatmap(&base, &sq, &[], Some((1.0, -1.0))));
    invalid(Figures::default().heatmap(&base, &sq, &[], Some((f64::NAN, 1.0))));
    let other = HeatmapPanel { values: vec![vec![0.0; 3]; 3], ..sq.clone() };
    invalid(Figures::default().heatmap_grid(&base, "t", &[sq.clone(), other], &[], 2, None));

    let s = Series::new("s", vec![(0.0, 1.0), (1.0, 2.0)]);
    invalid(Figures::default().lines(&base, "t", "x", "y", &[], None));
    invalid(Figures::default().lines(&base, "t", "x", "y", &[Series::new("e", vec![])], None));
    invalid(Figures::default().lines(&base, "t", "x", "y", &[Series { points: vec![(f64::INFINITY, 0.0)], ..s.clone() }], None));
    invalid(Figures::default().lines(&base, "t", "x", "y", std::slice::from_ref(&s), Some((0.0, 0.0))));

    let g = BarGroup { name: "g".into(), values: vec![1.0, 2.0] };
    invalid(Figures::default().grouped_bars(&base, "t", "y", &[], std::slice::from_ref(&g), None));
    invalid(Figures::default().grouped_bars(&base, "t", "y", &["a", "b"], &[], None));
    invalid(Figures::default().grouped_bars(&base, "t", "y", &["a", "b", "c"], std::slice::from_ref(&g), None));
    invalid(Figures::default().grouped_bars(&base, "t", "y", &["a", "b"], &[BarGroup { values: vec![1.0, f64::NAN], ..g }], None));

    // Nothing was written for bad input.
    assert!(!dir.join("x.svg").exists() && !dir.join("x.png").exists());
}

#[test]
fn missing_font_fails_the_png_after_writing_the_svg() {
    let dir = out_dir("nofont");
    let font = dir.join("no-such-font.ttf");
    let base = dir.join("probe");
    let series = [Series::new("resid_post", vec![(0.0, 0.5), (1.0, 0.9)])];
    let err = Figures::with_font(&font).lines(&base, "No font here", "layer", "F1", &series, None).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&font.display().to_string()), "{msg}");
    assert!(msg.contains("scripts/setup.sh"), "{msg}");
    let svg = std::fs::read_to_string(dir.join("probe.svg")).expect("the SVG is written without a font");
    assert!(shows(&svg, "No font here") && shows(&svg, "resid_post"));
    assert!(!dir.join("probe.png").exists());

    // A file that is not a font is refused the same way.
    let junk = dir.join("junk.ttf");
    std::fs::write(&junk, b"not a font at all").unwrap();
    let err = Figures::with_font(&junk).lines(dir.join("junk"), "t", "x", "y", &series, None).unwrap_err();
    assert!(err.to_string().contains(&junk.display().to_string()), "{err}");
}

#[test]
fn palette_and_labels() {
    assert_eq!(sublayer_labels(2), ["A0", "M0", "A1", "M1"]);
    assert!(sublayer_labels(0).is_empty());
    for (i, name) in EMOTION_NAMES.iter().enumerate() {
        assert_eq!(color_for(name, 99), EMOTION_COLORS[i]);
        assert_eq!(color_for(&name.to_uppercase(), 0), EMOTION_COLORS[i]);
    }
    let distinct: std::collections::HashSet<_> = EMOTION_COLORS.iter().collect();
    assert_eq!(distinct.len(), 6);
    assert_ne!(color_for("prompting", 0), color_for("steering", 1));
    assert!(default_font_path().ends_with("DejaVuSans.ttf") || std::env::var_os("EMO_FONT").is_some());
}

#[test]
fn rectangular_heatmap_names_rows_columns_and_axes() {
    require_font();
    let dir = out_dir("matrix");
    // Layers x heads, as section 6 draws head importance.
    let (layers, heads) = (30, 9);
    let panels: Vec<HeatmapPanel> = EMOTION_NAMES[..2]
        .iter()
        .enumerate()
        .map(|(e, name)| HeatmapPanel {
            title: name.to_string(),
            values: (0..layers).map(|l| (0..heads).map(|h| ((l * heads + h + e) as f64 * 0.37).sin()).collect()).collect(),
        })
        .collect();
    let rows: Vec<String> = (0..layers).map(|l| l.to_string()).collect();
    let cols: Vec<String> = (0..heads).map(|h| format!("H{h}")).collect();
    let base = dir.join("heads");
    let w = Figures::default().matrix_grid(&base, "Head importance", &panels, &rows, &cols, ("head", "layer"), 2, None).unwrap();
    let svg = check(&w, &base);
    for t in ["Head importance", "anger", "sadness", "H0", "H8", "head", "layer", "0"] {
        assert!(shows(&svg, t), "SVG lacks {t}");
    }
    // 30 rows taller than 9 columns are wide: the panel is portrait.
    assert!(w.height > w.width / 2, "{}x{}", w.width, w.height);
    let err = Figures::default().matrix_grid(&base, "t", &panels, &rows[..3], &cols, ("", ""), 1, None).unwrap_err();
    assert!(err.to_string().contains("3 row labels for 30×9"), "{err}");
}

#[test]
fn lines_draw_confidence_bands_and_dashed_controls() {
    require_font();
    let dir = out_dir("bands");
    let ks = [0.0, 2.0, 4.0, 8.0, 16.0];
    let top = Series {
        band: ks.iter().map(|k| (-0.5 * k - 1.0, -0.5 * k + 1.0)).collect(),
        ..Series::new("top-k neurons", ks.iter().map(|&k| (k, -0.5 * k)).collect())
    };
    let random = Series { dashed: true, ..Series::new("random neurons", ks.iter().map(|&k| (k, -0.05 * k)).collect()) };
    let base = dir.join("ablation");
    let w = Figures::default().lines(&base, "Neuron ablation", "k", "Delta s", &[top.clone(), random], None).unwrap();
    let svg = check(&w, &base);
    assert!(shows(&svg, "top-k neurons") && shows(&svg, "random neurons"));
    assert!(svg.contains("<polygon"), "no band drawn");
    // The dashed curve is drawn as many short segments, the solid one as one polyline.
    let polylines = svg.matches("<polyline").count();
    assert!(polylines > 5, "{polylines} polylines");
    // The automatic y range covers the band, not just the points: the lowest band edge is -9.
    assert!(shows(&svg, "-8") || shows(&svg, "-9") || shows(&svg, "-10"), "{:?}", svg_texts(&svg));
    let bad = Series { band: vec![(0.0, 1.0)], ..top.clone() };
    let err = Figures::default().lines(&base, "t", "x", "y", &[bad], None).unwrap_err();
    assert!(err.to_string().contains("5 points but a band of 1"), "{err}");
    let inverted = Series { band: vec![(1.0, 0.0); 5], ..top };
    assert!(Figures::default().lines(&base, "t", "x", "y", &[inverted], None).is_err());
}

#[test]
fn lines_grid_draws_titled_panels_under_one_legend() {
    require_font();
    let dir = out_dir("lines-grid");
    let panel = |title: &str, slope: f64| LinesPanel {
        title: title.into(),
        x_label: "k".into(),
        y_label: "Delta s".into(),
        series: vec![
            Series::new("anger", (0..5).map(|k| (k as f64, slope * k as f64)).collect()),
            Series { dashed: true, ..Series::new("anger (random)", (0..5).map(|k| (k as f64, 0.1 * slope * k as f64)).collect()) },
            Series::new("fear", (0..5).map(|k| (k as f64, -slope * k as f64)).collect()),
        ],
        y_range: None,
    };
    let panels = [panel("ablate neurons", -3.0), panel("ablate heads", -1.0), panel("enhance neurons", 2.0)];
    let base = dir.join("fig3");
    let w = Figures::default().lines_grid(&base, "Fig. 3", &panels, 2).unwrap();
    let svg = check(&w, &base);
    // Two columns, two rows (the last one half empty), one legend with each name once.
    let single = Figures::default().lines(dir.join("one"), "one", "k", "Delta s", &panels[0].series, None).unwrap();
    assert_eq!(w.width, 2 * single.width);
    assert!(w.height > 2 * (single.height - 100), "{} vs {}", w.height, single.height);
    for t in ["Fig. 3", "ablate neurons", "ablate heads", "enhance neurons", "anger", "anger (random)", "fear"] {
        assert!(shows(&svg, t), "{t} missing: {:?}", svg_texts(&svg));
    }
    assert_eq!(svg_texts(&svg).iter().filter(|t| *t == "fear").count(), 1, "legend repeats names");
    let err = Figures::default().lines_grid(&base, "t", &[], 2).unwrap_err();
    assert!(err.to_string().contains("no panels"), "{err}");
    let empty = LinesPanel { series: vec![Series::new("x", vec![])], ..panels[0].clone() };
    let err = Figures::default().lines_grid(&base, "t", &[panels[0].clone(), empty], 2).unwrap_err();
    assert!(err.to_string().contains("panel 1") && err.to_string().contains("no points"), "{err}");
}
