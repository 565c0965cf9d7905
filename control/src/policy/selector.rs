//! Label selectors (`metav1.LabelSelector`): how a policy picks pods and
//! namespaces by their labels.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// A label selector: every `match_labels` pair and every expression must
/// hold. The empty selector selects everything; whether a selector is
/// absent or empty is told by `Option<LabelSelector>` where it matters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSelector {
    /// Labels that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: Labels,
    /// Set-based requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

/// One set-based requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// How the label is tested.
    pub operator: Operator,
    /// The values for `In` and `NotIn` (the API server refuses values
    /// with `Exists` and `DoesNotExist`, and none with `In` or `NotIn`;
    /// here `In` with no values matches nothing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// The operators of a requirement, spelled as the API spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    /// The label is present and its value is one of the values.
    In,
    /// The label is absent, or its value is none of the values.
    NotIn,
    /// The label is present, whatever its value.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl LabelSelector {
    /// The selector requiring these labels (and no expressions).
    pub fn labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> LabelSelector {
        LabelSelector {
            match_labels: pairs
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }

    /// The selector with one requirement (and no labels).
    pub fn expression(key: &str, operator: Operator, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_labels: Labels::new(),
            match_expressions: vec![Requirement {
                key: key.into(),
                operator,
                values: values.iter().map(|v| v.to_string()).collect(),
            }],
        }
    }

    /// Whether labels satisfy the selector.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    /// Whether labels satisfy the requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        let listed = value.is_some_and(|value| self.values.contains(value));
        match self.operator {
            Operator::In => listed,
            Operator::NotIn => !listed,
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_empty_selector_selects_everything() {
        assert!(LabelSelector::default().matches(&Labels::new()));
        assert!(LabelSelector::default().matches(&labels(&[("app", "x")])));
    }

    #[test]
    fn match_labels_needs_every_pair() {
        let selector = LabelSelector::labels([("app", "web"), ("tier", "front")]);
        assert!(selector.matches(&labels(&[("app", "web"), ("tier", "front"), ("x", "y")])));
        assert!(!selector.matches(&labels(&[("app", "web")])));
        assert!(!selector.matches(&labels(&[("app", "web"), ("tier", "back")])));
    }

    #[test]
    fn the_operators_follow_the_api() {
        let none = Labels::new();
        let a = labels(&[("pod", "a")]);
        let b = labels(&[("pod", "b")]);
        let is_in = LabelSelector::expression("pod", Operator::In, &["a", "c"]);
        assert!(is_in.matches(&a) && !is_in.matches(&b) && !is_in.matches(&none));
        let not_in = LabelSelector::expression("pod", Operator::NotIn, &["a", "c"]);
        assert!(!not_in.matches(&a) && not_in.matches(&b) && not_in.matches(&none));
        let exists = LabelSelector::expression("pod", Operator::Exists, &[]);
        assert!(exists.matches(&a) && exists.matches(&b) && !exists.matches(&none));
        let absent = LabelSelector::expression("pod", Operator::DoesNotExist, &[]);
        assert!(!absent.matches(&a) && absent.matches(&none));
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let mut selector = LabelSelector::expression("pod", Operator::NotIn, &["b"]);
        selector.match_labels = labels(&[("ns", "x")]);
        assert!(selector.matches(&labels(&[("ns", "x"), ("pod", "a")])));
        assert!(!selector.matches(&labels(&[("ns", "x"), ("pod", "b")])));
        assert!(!selector.matches(&labels(&[("pod", "a")])));
    }
}
