//! Task metrics with T5's post-processing. Scores are percentages (0–100), as the T5
//! paper and its evaluation code report them; correlations are ×100 too.

use fisherkit_common::{bail, ensure, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Every metric name `eval --metrics` accepts.
pub const METRIC_NAMES: &[&str] = &[
    "exact-match",
    "accuracy",
    "f1",
    "macro-f1",
    "mcc",
    "pearson",
    "spearman",
    "bleu",
    "rouge",
];

/// Map a prediction string to its class index among `labels`; `None` when it is not a
/// label (T5 counts such predictions as wrong).
pub fn to_class(text: &str, labels: &[String]) -> Option<usize> {
    let text = text.trim();
    labels.iter().position(|l| l == text)
}

/// Parse a prediction as a number; T5's `string_to_float` falls back to -1 when the
/// text is not a number, which we keep so correlations compare with the paper.
pub fn to_float(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|x| x.is_finite())
}

/// Result of [`evaluate`]: metric name → value, plus how many predictions could not be
/// post-processed (not a label / not a number).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Scores {
    pub metrics: BTreeMap<String, f64>,
    pub examples: usize,
    pub invalid_predictions: usize,
}

/// Compute the requested metrics. `labels` lists the classes for class metrics
/// (accuracy over classes, F1, MCC); when `None` they are the distinct references.
pub fn evaluate(
    predictions: &[String],
    references: &[String],
    metrics: &[String],
    labels: Option<&[String]>,
) -> Result<Scores> {
    ensure!(
        predictions.len() == references.len(),
        "{} predictions for {} references",
        predictions.len(),
        references.len()
    );
    ensure!(!references.is_empty(), "no examples to evaluate");
    let labels: Vec<String> = match labels {
        Some(l) => l.to_vec(),
        None => {
            let mut l: Vec<String> = references.iter().map(|r| r.trim().to_string()).collect();
            l.sort();
            l.dedup();
            l
        }
    };
    let classes = |texts: &[String]| -> Vec<Option<usize>> {
        texts.iter().map(|t| to_class(t, &labels)).collect()
    };
    let floats = |texts: &[String]| -> Vec<f64> {
        texts.iter().map(|t| to_float(t).unwrap_or(-1.0)).collect()
    };
    let mut out = BTreeMap::new();
    let mut invalid = 0;
    for metric in metrics {
        let m = metric.as_str();
        match m {
            "exact-match" => {
                out.insert(m.into(), exact_match(predictions, references));
            }
            "accuracy" | "f1" | "macro-f1" | "mcc" => {
                let (p, r) = (classes(predictions), classes(references));
                invalid = invalid.max(p.iter().filter(|c| c.is_none()).count());
                ensure!(
                    r.iter().all(Option::is_some),
                    "a reference is not one of the labels {labels:?}"
                );
                let r: Vec<usize> = r.into_iter().map(Option::unwrap).collect();
                let v = match m {
                    "accuracy" => accuracy(&p, &r),
                    "f1" => {
                        ensure!(
                            labels.len() == 2,
                            "binary f1 needs exactly 2 labels (the second is positive), got {labels:?}; use macro-f1"
                        );
                        f1_binary(&p, &r, 1)
                    }
                    "macro-f1" => f1_macro(&p, &r, labels.len()),
                    _ => {
                        ensure!(
                            labels.len() == 2,
                            "mcc needs exactly 2 labels, got {labels:?}"
                        );
                        mcc(&p, &r)
                    }
                };
                out.insert(m.into(), v);
            }
            "pearson" | "spearman" => {
                invalid = invalid.max(predictions.iter().filter(|t| to_float(t).is_none()).count());
                let r: Vec<f64> = references
                    .iter()
                    .map(|t| {
                        to_float(t).ok_or_else(|| {
                            fisherkit_common::anyhow!("reference {t:?} is not a number")
                        })
                    })
                    .collect::<Result<_>>()?;
                let p = floats(predictions);
                let v = if m == "pearson" {
                    pearson(&p, &r)
                } else {
                    spearman(&p, &r)
                };
                out.insert(m.into(), 100.0 * v);
            }
            "bleu" => {
                out.insert(m.into(), corpus_bleu(predictions, references));
            }
            "rouge" => {
                for (name, v) in rouge(predictions, references) {
                    out.insert(name.into(), v);
                }
            }
            other => bail!(
                "unknown metric {other:?}; expected one of {}",
                METRIC_NAMES.join(", ")
            ),
        }
    }
    Ok(Scores {
        metrics: out,
        examples: references.len(),
        invalid_predictions: invalid,
    })
}

/// Percentage of predictions equal to their reference (surrounding whitespace ignored).
pub fn exact_match(predictions: &[String], references: &[String]) -> f64 {
    let hits = predictions
        .iter()
        .zip(references)
        .filter(|(p, r)| p.trim() == r.trim())
        .count();
    100.0 * hits as f64 / references.len().max(1) as f64
}

pub fn accuracy(pred: &[Option<usize>], refs: &[usize]) -> f64 {
    let hits = pred
        .iter()
        .zip(refs)
        .filter(|(p, r)| **p == Some(**r))
        .count();
    100.0 * hits as f64 / refs.len().max(1) as f64
}

/// (true positives, false positives, false negatives) of class `c`.
fn confusion(pred: &[Option<usize>], refs: &[usize], c: usize) -> (f64, f64, f64) {
    let mut tp = 0.0;
    let mut fp = 0.0;
    let mut fneg = 0.0;
    for (p, &r) in pred.iter().zip(refs) {
        let is_p = *p == Some(c);
        match (is_p, r == c) {
            (true, true) => tp += 1.0,
            (true, false) => fp += 1.0,
            (false, true) => fneg += 1.0,
            _ => {}
        }
    }
    (tp, fp, fneg)
}

/// F1 of the `positive` class, ×100 (0 when undefined, as scikit-learn).
pub fn f1_binary(pred: &[Option<usize>], refs: &[usize], positive: usize) -> f64 {
    let (tp, fp, fneg) = confusion(pred, refs, positive);
    if tp == 0.0 {
        return 0.0;
    }
    100.0 * 2.0 * tp / (2.0 * tp + fp + fneg)
}

/// Unweighted mean of per-class F1 over `num_classes` classes, ×100.
pub fn f1_macro(pred: &[Option<usize>], refs: &[usize], num_classes: usize) -> f64 {
    (0..num_classes)
        .map(|c| f1_binary(pred, refs, c))
        .sum::<f64>()
        / num_classes as f64
}

/// Matthews correlation coefficient of a binary task (class 1 positive), ×100.
/// An invalid prediction counts as a prediction of the wrong class.
pub fn mcc(pred: &[Option<usize>], refs: &[usize]) -> f64 {
    let (tp, fp, fneg) = confusion(pred, refs, 1);
    let tn = refs.len() as f64 - tp - fp - fneg;
    let denom = ((tp + fp) * (tp + fneg) * (tn + fp) * (tn + fneg)).sqrt();
    if denom == 0.0 {
        return 0.0;
    }
    100.0 * (tp * tn - fp * fneg) / denom
}

/// Pearson correlation (0 when a side is constant).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        return 0.0;
    }
    sxy / (sxx * syy).sqrt()
}

/// Ranks starting at 1, ties sharing their average rank.
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman correlation: Pearson of the tie-averaged ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// sacreBLEU's default `13a` tokenisation (mteval-v13a).
pub fn tokenize_13a(line: &str) -> Vec<String> {
    let mut s = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if s.contains('&') {
        s = s
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut out = String::with_capacity(s.len() + 16);
    let chars: Vec<char> = s.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let prev_digit = i > 0 && chars[i - 1].is_ascii_digit();
        let next_digit = chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
        let split = match c {
            // Punctuation and symbols in the ASCII ranges of the 13a regex.
            '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/' => true,
            // Period and comma unless between digits.
            '.' | ',' => !(prev_digit && next_digit),
            // Dash after a digit.
            '-' => prev_digit,
            _ => false,
        };
        if split {
            out.push(' ');
            out.push(c);
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out.split_whitespace().map(str::to_string).collect()
}

fn ngram_counts(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut m = HashMap::new();
    if tokens.len() >= n {
        for g in tokens.windows(n) {
            *m.entry(g).or_insert(0) += 1;
        }
    }
    m
}

/// Corpus BLEU with one reference per segment, as sacreBLEU's defaults: 13a
/// tokenisation, 4-grams, brevity penalty, "exp" smoothing of zero n-gram matches.
pub fn corpus_bleu(hypotheses: &[String], references: &[String]) -> f64 {
    let mut correct = [0usize; 4];
    let mut total = [0usize; 4];
    let (mut sys_len, mut ref_len) = (0usize, 0usize);
    for (h, r) in hypotheses.iter().zip(references) {
        let (h, r) = (tokenize_13a(h), tokenize_13a(r));
        sys_len += h.len();
        ref_len += r.len();
        for n in 1..=4 {
            let rc = ngram_counts(&r, n);
            for (g, c) in ngram_counts(&h, n) {
                correct[n - 1] += c.min(rc.get(g).copied().unwrap_or(0));
            }
            total[n - 1] += h.len().saturating_sub(n - 1);
        }
    }
    bleu_from_counts(&correct, &total, sys_len, ref_len)
}

fn bleu_from_counts(
    correct: &[usize; 4],
    total: &[usize; 4],
    sys_len: usize,
    ref_len: usize,
) -> f64 {
    if correct.iter().all(|&c| c == 0) {
        return 0.0;
    }
    let mut precisions = [0.0f64; 4];
    let mut smooth = 1.0;
    for n in 0..4 {
        if total[n] == 0 {
            break;
        }
        precisions[n] = if correct[n] == 0 {
            smooth *= 2.0;
            100.0 / (smooth * total[n] as f64)
        } else {
            100.0 * correct[n] as f64 / total[n] as f64
        };
    }
    let bp = if sys_len < ref_len {
        if sys_len == 0 {
            0.0
        } else {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        }
    } else {
        1.0
    };
    let log_sum: f64 = precisions
        .iter()
        .map(|&p| if p == 0.0 { -9_999_999_999.0 } else { p.ln() })
        .sum();
    bp * (log_sum / 4.0).exp()
}

/// `rouge_score` tokenisation: lower-case, non-alphanumerics become spaces.
fn rouge_tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn f_measure(overlap: f64, pred_len: f64, ref_len: f64) -> f64 {
    let p = if pred_len > 0.0 {
        overlap / pred_len
    } else {
        0.0
    };
    let r = if ref_len > 0.0 {
        overlap / ref_len
    } else {
        0.0
    };
    if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    }
}

fn rouge_n(pred: &[String], reference: &[String], n: usize) -> f64 {
    let (pc, rc) = (ngram_counts(pred, n), ngram_counts(reference, n));
    let overlap: usize = pc
        .iter()
        .map(|(g, c)| (*c).min(rc.get(g).copied().unwrap_or(0)))
        .sum();
    f_measure(
        overlap as f64,
        pred.len().saturating_sub(n - 1) as f64,
        reference.len().saturating_sub(n - 1) as f64,
    )
}

fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut diag = 0;
        for (j, y) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = if x == y { diag + 1 } else { up.max(row[j]) };
            diag = up;
        }
    }
    row[b.len()]
}

/// Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures, ×100.
pub fn rouge(predictions: &[String], references: &[String]) -> [(&'static str, f64); 3] {
    let mut sums = [0.0f64; 3];
    for (p, r) in predictions.iter().zip(references) {
        let (p, r) = (rouge_tokens(p), rouge_tokens(r));
        sums[0] += rouge_n(&p, &r, 1);
        sums[1] += rouge_n(&p, &r, 2);
        sums[2] += f_measure(lcs_len(&p, &r) as f64, p.len() as f64, r.len() as f64);
    }
    let n = references.len().max(1) as f64;
    [
        ("rouge1", 100.0 * sums[0] / n),
        ("rouge2", 100.0 * sums[1] / n),
        ("rougeL", 100.0 * sums[2] / n),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn class_metrics_by_hand() {
        // refs 1 1 0 0 1 ; preds 1 0 0 1 invalid → tp1 fp1 fn2 tn1
        let labels = s(&["no", "yes"]);
        let refs = s(&["yes", "yes", "no", "no", "yes"]);
        let preds = s(&["yes", "no", "no", "yes", "maybe"]);
        let sc = evaluate(
            &preds,
            &refs,
            &s(&["accuracy", "f1", "macro-f1", "mcc", "exact-match"]),
            Some(&labels),
        )
        .unwrap();
        let m = &sc.metrics;
        assert!(close(m["accuracy"], 40.0));
        assert!(close(m["exact-match"], 40.0));
        assert!(close(m["f1"], 100.0 * 2.0 / 5.0)); // 2·1/(2·1+1+2)
                                                    // class "no": tp1 (idx2) fp1 (idx1) fn1 (idx3) → 2/4; macro = (0.5+0.4)/2
        assert!(close(m["macro-f1"], 45.0));
        // mcc = (1·1 - 1·2)/sqrt(2·3·2·3) = -1/6
        assert!(close(m["mcc"], -100.0 / 6.0), "{}", m["mcc"]);
        assert_eq!(sc.invalid_predictions, 1);
    }

    #[test]
    fn correlations_by_hand() {
        assert!(close(
            pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 7.0]),
            0.9933992677987828
        ));
        assert_eq!(ranks(&[10.0, 20.0, 10.0, 5.0]), vec![2.5, 4.0, 2.5, 1.0]);
        // ranks x: 1 2.5 2.5 4 ; y: 1 2 3 4 → pearson = 0.9486832980505138
        assert!(close(
            spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]),
            0.9486832980505138
        ));
        let sc = evaluate(
            &s(&["1.0", "x", "3.0"]),
            &s(&["1.0", "2.0", "3.0"]),
            &s(&["pearson"]),
            None,
        )
        .unwrap();
        // "x" → -1: pearson([1,-1,3],[1,2,3]) = 0.5
        assert!(close(sc.metrics["pearson"], 50.0), "{:?}", sc);
        assert_eq!(sc.invalid_predictions, 1);
    }

    #[test]
    fn bleu_by_hand() {
        assert!(close(
            corpus_bleu(
                &s(&["the cat sat on the mat"]),
                &s(&["the cat sat on the mat"])
            ),
            100.0
        ));
        // hyp "the cat sat on mat" vs ref "the cat sat on the mat": matches 5/5, 3/4, 2/3, 1/2;
        // bp = exp(1 - 6/5).
        let want = (1.0f64 - 6.0 / 5.0).exp() * (100.0f64 * 75.0 * (200.0 / 3.0) * 50.0).powf(0.25);
        let got = corpus_bleu(&s(&["the cat sat on mat"]), &s(&["the cat sat on the mat"]));
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        // Zero 4-gram matches are smoothed: 100/(2·total).
        let got = corpus_bleu(&s(&["a b c x"]), &s(&["a b c d"]));
        let want = (75.0f64 * (200.0 / 3.0) * 50.0 * 50.0).powf(0.25);
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        assert_eq!(
            tokenize_13a("Hello, world. 3.5-4 (x)"),
            s(&["Hello", ",", "world", ".", "3.5", "-", "4", "(", "x", ")"])
        );
        assert_eq!(corpus_bleu(&s(&["x"]), &s(&["y"])), 0.0);
    }

    #[test]
    fn rouge_by_hand() {
        let r = rouge(
            &s(&["the cat was found under the bed"]),
            &s(&["The cat was under the bed."]),
        );
        // pred 7 tokens, ref 6; unigram overlap 6 → P 6/7 R 1; bigrams overlap 4 (the cat,
        // cat was, under the, the bed) of 6/5; LCS 6.
        assert!(close(r[0].1, 100.0 * 2.0 * (6.0 / 7.0) / (6.0 / 7.0 + 1.0)));
        assert!(close(
            r[1].1,
            100.0 * 2.0 * (4.0 / 6.0) * (4.0 / 5.0) / (4.0 / 6.0 + 4.0 / 5.0)
        ));
        assert!(close(r[2].1, r[0].1));
    }

    #[test]
    fn bad_requests_are_errors() {
        assert!(evaluate(&s(&["a"]), &s(&["a", "b"]), &s(&["accuracy"]), None).is_err());
        assert!(evaluate(&s(&["a"]), &s(&["a"]), &s(&["nope"]), None).is_err());
        assert!(evaluate(&s(&["a"]), &s(&["z"]), &s(&["pearson"]), None).is_err());
    }
}
