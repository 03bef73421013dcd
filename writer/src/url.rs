//! Database URLs: how they are shown ([`redact_url`], the one redaction
//! every error, log line, metric label and report goes through) and the
//! TLS spellings a MySQL URL may borrow from PostgreSQL's.

use std::borrow::Cow;

/// What a hidden secret reads as.
const MASK: &str = "***";

/// Whether a query parameter carries a secret (`password`, `sslpassword`,
/// `pwd`, `token`, …), ignoring case, `-` and `_`.
fn is_secret(name: &str) -> bool {
    let n: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    n.contains("password")
        || n.contains("passwd")
        || n == "pwd"
        || n.contains("secret")
        || n.contains("token")
}

/// `url` with every secret replaced by `***`: the password of the user
/// information and the value of every query parameter that names one
/// (`?password=…`). A URL without secrets comes back unchanged. One that
/// does not parse is cut at `://` and `@`/`?` so nothing after a scheme
/// survives but the host part.
///
/// ```
/// use writebehind_writer::redact_url;
/// assert_eq!(redact_url("postgres://app:hunter2@db:5432/x"), "postgres://app:***@db:5432/x");
/// assert_eq!(redact_url("mysql://app@db/x?password=hunter2&ssl-mode=require"),
///            "mysql://app@db/x?password=***&ssl-mode=require");
/// assert_eq!(redact_url("sqlite://./data/app.db"), "sqlite://./data/app.db");
/// ```
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return redact_unparsed(url);
    };
    let mut changed = false;
    if parsed.password().is_some() {
        if parsed.set_password(Some(MASK)).is_err() {
            return redact_unparsed(url);
        }
        changed = true;
    }
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if pairs.iter().any(|(k, _)| is_secret(k)) {
        let mut q = parsed.query_pairs_mut();
        q.clear();
        for (k, v) in &pairs {
            q.append_pair(k, if is_secret(k) { MASK } else { v });
        }
        drop(q);
        changed = true;
    }
    if changed {
        parsed.to_string()
    } else {
        url.to_owned()
    }
}

/// The fallback for text the URL parser refuses: keep the scheme and what
/// follows the last `@` up to any `?`; hide the rest when it could hold a secret.
fn redact_unparsed(url: &str) -> String {
    let (head, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let (rest, query) = match rest.find('?') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let rest = match rest.rfind('@') {
        Some(at) => Cow::Owned(format!("{MASK}{}", &rest[at..])),
        None => Cow::Borrowed(rest),
    };
    let query = match query {
        Some(q)
            if q.split('&')
                .any(|p| is_secret(p.split('=').next().unwrap_or(p))) =>
        {
            format!("?{MASK}")
        }
        Some(q) => format!("?{q}"),
        None => String::new(),
    };
    format!("{head}{rest}{query}")
}

/// A MySQL/MariaDB URL with PostgreSQL's TLS spellings turned into
/// sqlx's: `sslmode`/`ssl-mode` `disable`, `prefer`, `require`,
/// `verify-ca`, `verify-full` and `sslrootcert`, so one set of settings
/// serves both servers. Anything else is left as written.
#[cfg_attr(not(feature = "mysql"), allow(dead_code))]
pub(crate) fn mysql_tls_spelling(url: &str) -> Cow<'_, str> {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return Cow::Borrowed(url);
    };
    let mut changed = false;
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| {
            let (k, v) = (k.into_owned(), v.into_owned());
            let mapped = match k.as_str() {
                "sslmode" | "ssl-mode" | "ssl_mode" => {
                    let mode = match v.to_ascii_lowercase().as_str() {
                        "disable" => "DISABLED",
                        "prefer" => "PREFERRED",
                        "require" => "REQUIRED",
                        "verify-ca" => "VERIFY_CA",
                        "verify-full" => "VERIFY_IDENTITY",
                        _ => return (k, v),
                    };
                    ("ssl-mode".to_owned(), mode.to_owned())
                }
                "sslrootcert" | "ssl-root-cert" => ("ssl-ca".to_owned(), v.clone()),
                _ => return (k, v),
            };
            changed = true;
            mapped
        })
        .collect();
    if !changed {
        return Cow::Borrowed(url);
    }
    parsed.query_pairs_mut().clear().extend_pairs(&pairs);
    Cow::Owned(parsed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_wherever_they_sit() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://./x.db"), "sqlite://./x.db");
        assert_eq!(redact_url("sqlite::memory:"), "sqlite::memory:");
        let q = redact_url("postgres://h/db?user=u&password=secret&sslmode=require");
        assert_eq!(q, "postgres://h/db?user=u&password=***&sslmode=require");
        let q = redact_url("mysql://h/db?Pass_Word=secret&sslpassword=secret2");
        assert!(!q.contains("secret"), "{q}");
        // Percent-encoded passwords are hidden too.
        assert!(!redact_url("postgres://u:p%40ss@h/db").contains("p%40ss"));
    }

    #[test]
    fn unparseable_urls_keep_no_secret() {
        for u in [
            "postgres://u:secret@[::1/db",
            "not a url u:secret@host",
            "postgres://u:secret@h:99999/db?password=secret",
        ] {
            let r = redact_url(u);
            assert!(!r.contains("secret"), "{u} -> {r}");
        }
    }

    #[test]
    fn mysql_urls_take_postgres_tls_names() {
        assert_eq!(
            mysql_tls_spelling("mysql://h/db?sslmode=verify-full&sslrootcert=/ca.pem"),
            "mysql://h/db?ssl-mode=VERIFY_IDENTITY&ssl-ca=%2Fca.pem"
        );
        assert_eq!(
            mysql_tls_spelling("mysql://h/db?ssl-mode=REQUIRED"),
            "mysql://h/db?ssl-mode=REQUIRED"
        );
        assert_eq!(mysql_tls_spelling("mysql://h/db"), "mysql://h/db");
    }
}
