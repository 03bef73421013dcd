//! Backends and validated SQL identifiers.

use crate::error::{Error, Result};

/// The database behind a URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `sqlite:` URLs.
    Sqlite,
    /// `postgres://` and `postgresql://` URLs.
    Postgres,
    /// `mysql://` URLs (MySQL and MariaDB).
    MySql,
}

impl Backend {
    /// The backend a URL names, from its scheme alone.
    pub fn from_url(url: &str) -> Result<Backend> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            "mysql" | "mariadb" => Ok(Backend::MySql),
            _ => Err(Error::UnsupportedUrl {
                scheme: scheme.chars().take(32).collect(),
            }),
        }
    }
}

/// A plain SQL identifier: `[A-Za-z_][A-Za-z0-9_]{0,62}`. It is always
/// quoted for the backend when rendered, so keywords are fine; nothing else
/// can reach SQL text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ident(String);

impl Ident {
    /// Validates `s`.
    pub fn new(s: &str) -> Result<Ident> {
        let bad = |reason| {
            Err(Error::InvalidIdent {
                name: s.chars().take(80).collect(),
                reason,
            })
        };
        let mut chars = s.chars();
        match chars.next() {
            None => return bad("empty"),
            Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
                return bad("must start with an ASCII letter or underscore")
            }
            Some(_) => {}
        }
        if s.len() > 63 {
            return bad("longer than 63 characters");
        }
        if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return bad("only ASCII letters, digits and underscores are allowed");
        }
        Ok(Ident(s.to_owned()))
    }

    /// A crate-internal name known to be valid.
    pub(crate) fn fixed(s: &'static str) -> Ident {
        debug_assert!(Ident::new(s).is_ok(), "{s}");
        Ident(s.to_owned())
    }

    /// The identifier as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identifier quoted for `backend`.
    pub(crate) fn quoted(&self, backend: Backend) -> String {
        // Validation guarantees no quote characters inside.
        match backend {
            Backend::MySql => format!("`{}`", self.0),
            Backend::Sqlite | Backend::Postgres => format!("\"{}\"", self.0),
        }
    }
}

impl std::fmt::Display for Ident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ident_rejects_non_plain_names() {
        for s in ["a;drop", "\"x\"", "", "1abc", "a b", "a-b", "é", "x`y"] {
            assert!(
                matches!(Ident::new(s), Err(Error::InvalidIdent { .. })),
                "{s:?}"
            );
        }
        let long = "a".repeat(64);
        assert!(matches!(
            Ident::new(&long),
            Err(Error::InvalidIdent {
                reason: "longer than 63 characters",
                ..
            })
        ));
    }

    #[test]
    fn ident_accepts_plain_names_and_quotes_them() {
        let max = "a".repeat(63);
        assert_eq!(Ident::new(&max).map(|i| i.as_str().len()).ok(), Some(63));
        let i = Ident::new("_Counters_2").ok();
        assert_eq!(
            i.as_ref().map(|i| i.quoted(Backend::MySql)),
            Some("`_Counters_2`".into())
        );
        assert_eq!(
            i.as_ref().map(|i| i.quoted(Backend::Postgres)),
            Some("\"_Counters_2\"".into())
        );
    }

    #[test]
    fn backend_from_url_scheme() {
        assert_eq!(
            Backend::from_url("sqlite://x.db").ok(),
            Some(Backend::Sqlite)
        );
        assert_eq!(
            Backend::from_url("sqlite::memory:").ok(),
            Some(Backend::Sqlite)
        );
        assert_eq!(
            Backend::from_url("postgresql://h/db").ok(),
            Some(Backend::Postgres)
        );
        assert_eq!(
            Backend::from_url("mysql://root@h/db").ok(),
            Some(Backend::MySql)
        );
        assert!(
            matches!(Backend::from_url("redis://h"), Err(Error::UnsupportedUrl { scheme }) if scheme == "redis")
        );
    }
}
