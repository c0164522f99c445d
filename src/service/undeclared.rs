//! Counts of the features decisions sent that their module does not declare.
//!
//! Such features are accepted and never learned from (docs/api.md), so an
//! operator needs to see them: a counter per (module, feature) in `/metrics`
//! and one warning the first time each pair is seen. Names come from clients,
//! so the table is bounded: past [`MAX_NAMES_PER_MODULE`] distinct names a
//! module's further ones count under `feature="_other"`, and a client that
//! sends a fresh name with every request can neither grow memory nor flood
//! the log.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use parking_lot::Mutex;

use crate::store::trade::shorten;

/// Distinct undeclared feature names tracked per module.
pub const MAX_NAMES_PER_MODULE: usize = 64;

/// The name the overflow is counted under.
pub const OTHER: &str = "_other";

#[derive(Default)]
pub struct UndeclaredFeatures {
    counts: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
}

impl UndeclaredFeatures {
    /// Counts one decision's undeclared features of `module`.
    pub fn count(&self, module: &str, features: &[(String, f64)]) {
        let mut counts = self.counts.lock();
        let names = counts.entry(module.to_string()).or_default();
        for (name, _) in features {
            if let Some(n) = names.get_mut(name) {
                *n += 1;
                continue;
            }
            if names.len() < MAX_NAMES_PER_MODULE {
                tracing::warn!(
                    module,
                    feature = %shorten(name),
                    "a decision sent a feature the module's models file does not declare: accepted, not learned from"
                );
                names.insert(name.clone(), 1);
            } else {
                let other = names.entry(OTHER.to_string()).or_insert(0);
                if *other == 0 {
                    tracing::warn!(
                        module,
                        limit = MAX_NAMES_PER_MODULE,
                        "more distinct undeclared features than are tracked: the rest count as _other"
                    );
                }
                *other += 1;
            }
        }
    }

    /// How often `module` sent `feature` (or, for `_other`, the untracked ones).
    pub fn get(&self, module: &str, feature: &str) -> u64 {
        self.counts.lock().get(module).and_then(|m| m.get(feature)).copied().unwrap_or(0)
    }

    /// The Prometheus lines of `paramopt_undeclared_features_total`.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP paramopt_undeclared_features_total Decisions that sent a feature their module does not declare \
             (accepted, not learned from).\n# TYPE paramopt_undeclared_features_total counter"
        );
        for (module, names) in self.counts.lock().iter() {
            for (feature, n) in names {
                let _ = writeln!(
                    out,
                    "paramopt_undeclared_features_total{{module=\"{module}\",feature=\"{}\"}} {n}",
                    escape(feature)
                );
            }
        }
    }
}

/// A label value as Prometheus' text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_module_and_feature_and_bounds_the_names() {
        let u = UndeclaredFeatures::default();
        u.count("crypto", &[("rsi".into(), 1.0), ("macd".into(), 2.0)]);
        u.count("crypto", &[("rsi".into(), 3.0)]);
        u.count("stocks", &[("rsi".into(), 3.0)]);
        assert_eq!((u.get("crypto", "rsi"), u.get("crypto", "macd"), u.get("stocks", "rsi")), (2, 1, 1));
        for i in 0..MAX_NAMES_PER_MODULE + 10 {
            u.count("options", &[(format!("f{i}"), 0.0)]);
        }
        assert_eq!(u.get("options", OTHER), 10);
        assert_eq!(u.counts.lock()["options"].len(), MAX_NAMES_PER_MODULE + 1);
        let mut text = String::new();
        u.render(&mut text);
        assert!(text.contains("paramopt_undeclared_features_total{module=\"crypto\",feature=\"rsi\"} 2"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let u = UndeclaredFeatures::default();
        u.count("crypto", &[("a\"b\\c\nd".into(), 1.0)]);
        let mut text = String::new();
        u.render(&mut text);
        assert!(text.contains(r#"feature="a\"b\\c\nd"} 1"#), "{text}");
    }
}
