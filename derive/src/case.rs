//! `rename_all`: how field names become column names.
//!
//! The rules are serde's, applied to the (snake_case) Rust field name, and
//! limited to the ones that produce plain SQL identifiers: `kebab-case` and
//! `SCREAMING-KEBAB-CASE` put a `-` in the name, which no table of ours can
//! have, so they are refused with a message instead of failing at open.

use syn::LitStr;

/// A `rename_all` rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum RenameRule {
    /// The field name as written (no `rename_all`).
    #[default]
    None,
    /// `snake_case`: the field name as written.
    Snake,
    /// `camelCase`: `like_count` -> `likeCount`.
    Camel,
    /// `PascalCase`: `like_count` -> `LikeCount`.
    Pascal,
    /// `SCREAMING_SNAKE_CASE`: `like_count` -> `LIKE_COUNT`.
    ScreamingSnake,
    /// `lowercase`: `like_count` -> `like_count`.
    Lower,
    /// `UPPERCASE`: `like_count` -> `LIKE_COUNT`.
    Upper,
}

const ACCEPTED: &str =
    "\"snake_case\", \"camelCase\", \"PascalCase\", \"SCREAMING_SNAKE_CASE\", \"lowercase\", \"UPPERCASE\"";

impl RenameRule {
    /// The rule a `rename_all = "..."` literal names.
    pub(crate) fn parse(lit: &LitStr) -> syn::Result<RenameRule> {
        let rule = match lit.value().as_str() {
            "snake_case" => RenameRule::Snake,
            "camelCase" => RenameRule::Camel,
            "PascalCase" => RenameRule::Pascal,
            "SCREAMING_SNAKE_CASE" => RenameRule::ScreamingSnake,
            "lowercase" => RenameRule::Lower,
            "UPPERCASE" => RenameRule::Upper,
            kebab @ ("kebab-case" | "SCREAMING-KEBAB-CASE") => {
                return Err(syn::Error::new_spanned(
                    lit,
                    format!(
                        "rename_all = \"{kebab}\" makes column names with `-`, which are not plain \
                         SQL identifiers; use \"snake_case\" (or name the column with \
                         #[writebehind(column = \"...\")])"
                    ),
                ));
            }
            other => {
                return Err(syn::Error::new_spanned(
                    lit,
                    format!("unknown rename_all rule \"{other}\"; expected one of {ACCEPTED}"),
                ));
            }
        };
        Ok(rule)
    }

    /// The column name of the field `field` under this rule.
    pub(crate) fn apply(self, field: &str) -> String {
        match self {
            RenameRule::None | RenameRule::Snake => field.to_owned(),
            RenameRule::Lower => field.to_ascii_lowercase(),
            RenameRule::Upper | RenameRule::ScreamingSnake => field.to_ascii_uppercase(),
            RenameRule::Pascal => pascal(field),
            RenameRule::Camel => {
                let pascal = pascal(field);
                let mut chars = pascal.chars();
                match chars.next() {
                    Some(first) => first.to_ascii_lowercase().to_string() + chars.as_str(),
                    None => pascal,
                }
            }
        }
    }
}

fn pascal(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut capitalize = true;
    for ch in field.chars() {
        if ch == '_' {
            capitalize = true;
        } else if capitalize {
            out.push(ch.to_ascii_uppercase());
            capitalize = false;
        } else {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::RenameRule::{self, *};

    fn rule(s: &str) -> syn::Result<RenameRule> {
        RenameRule::parse(&syn::LitStr::new(s, proc_macro2::Span::call_site()))
    }

    #[test]
    fn every_accepted_rule_renames_like_serde() {
        let cases = [
            (Snake, "like_count", "like_count"),
            (Camel, "like_count", "likeCount"),
            (Pascal, "like_count", "LikeCount"),
            (ScreamingSnake, "like_count", "LIKE_COUNT"),
            (Lower, "like_count", "like_count"),
            (Upper, "like_count", "LIKE_COUNT"),
            (Camel, "views", "views"),
            (Pascal, "views", "Views"),
            (Camel, "a_b_c", "aBC"),
            (None, "like_count", "like_count"),
        ];
        for (rule, field, column) in cases {
            assert_eq!(rule.apply(field), column, "{rule:?} {field}");
        }
    }

    #[test]
    fn parse_accepts_the_sql_safe_rules_only() {
        assert_eq!(rule("camelCase").ok(), Some(Camel));
        assert_eq!(rule("SCREAMING_SNAKE_CASE").ok(), Some(ScreamingSnake));
        let kebab = rule("kebab-case").err().map(|e| e.to_string());
        assert!(kebab.is_some_and(|m| m.contains("not plain SQL identifiers")));
        let unknown = rule("Train-Case").err().map(|e| e.to_string());
        assert!(unknown.is_some_and(|m| m.contains("unknown rename_all rule")));
    }
}
