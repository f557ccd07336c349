//! Golden replays: recordings of real traffic (`tests/golden/*.rec`, made by `record.sh`
//! there) replayed through the whole userspace pipeline, compared span by span with the
//! expected JSON beside them. A mismatch writes `NAME.actual.jsonl` for review.

use std::path::{Path, PathBuf};

use crate::{app::replay_recording, export::terminal::json_value};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn replay_json(rec: &Path) -> String {
    let file = std::fs::File::open(rec).unwrap();
    let mut spans = Vec::new();
    let (clock, _) = replay_recording(std::io::BufReader::new(file), Default::default(), |s| {
        spans.push(s)
    })
    .unwrap();
    spans
        .iter()
        .map(|s| json_value(s, &clock).to_string() + "\n")
        .collect()
}

#[test]
fn golden_replays_match() {
    let mut recordings: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rec"))
        .collect();
    recordings.sort();
    assert!(recordings.len() >= 2, "golden recordings are missing");
    let mut failures = Vec::new();
    for rec in &recordings {
        let actual = replay_json(rec);
        assert!(!actual.is_empty(), "{} gives no spans", rec.display());
        let expected_path = rec.with_extension("jsonl");
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        let actual_path = rec.with_extension("actual.jsonl");
        if actual != expected {
            std::fs::write(&actual_path, &actual).unwrap();
            failures.push(format!(
                "{}: spans differ; see {} (rename it to {} if it is right)",
                rec.display(),
                actual_path.display(),
                expected_path.display()
            ));
        } else {
            let _ = std::fs::remove_file(&actual_path);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn replays_are_reproducible() {
    let rec = golden_dir().join("python-curl.rec");
    assert_eq!(replay_json(&rec), replay_json(&rec));
}
