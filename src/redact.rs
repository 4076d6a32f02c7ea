//! Credentials never leave the process: a URL is shown with its user
//! information and query values masked, wherever it is logged, kept as an
//! error, served over HTTP or written to a report or the state file.
//!
//! A Global or team URL may carry a token in its query (`?token=…`) or a
//! password in its authority (`user:password@host`); either is a secret the
//! operator did not mean to publish. The path is kept: it names the
//! endpoint, and servers put no secrets there by convention.

use std::fmt;

/// What replaces a secret.
pub const MASK: &str = "***";

/// Schemes whose URLs are masked inside free text.
const SCHEMES: [&str; 5] = ["wss://", "ws://", "https://", "http://", "nats://"];

/// `url` with its user information and every query value masked, and its
/// fragment dropped: `wss://u:p@host/x?token=abc&v=2` becomes
/// `wss://***@host/x?token=***&v=***`. Text that is not a URL comes back
/// unchanged.
pub fn url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    push_url(&mut out, url);
    out
}

/// `text` with every URL inside it masked as [`url`] does: for error
/// messages that quote the URL they refuse.
pub fn text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = find_scheme(rest) {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        // A URL in prose ends at whitespace or a quote.
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .unwrap_or(tail.len());
        push_url(&mut out, &tail[..end]);
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// A URL that displays masked, for log fields: `url = %Redacted(&url)`.
pub struct Redacted<'a>(pub &'a str);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&url(self.0))
    }
}

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", url(self.0))
    }
}

fn find_scheme(text: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    SCHEMES.iter().filter_map(|s| lower.find(s)).min()
}

fn push_url(out: &mut String, url: &str) {
    // Without a scheme (a server's malformed `ws_url`), the same shape
    // is assumed: authority, path, query.
    let rest = match url.split_once("://") {
        Some((scheme, rest)) => {
            out.push_str(scheme);
            out.push_str("://");
            rest
        }
        None => url,
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((_, host)) => {
            out.push_str(MASK);
            out.push('@');
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
    let (path, query) = match after.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (after, None),
    };
    out.push_str(path);
    if let Some(query) = query {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((key, _)) => {
                    out.push_str(key);
                    out.push('=');
                    out.push_str(MASK);
                }
                // A bare value (`?abcdef`) may itself be the token.
                None if !pair.is_empty() => out.push_str(MASK),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_user_information_and_query_values() {
        assert_eq!(
            url("wss://bot:s3cret@api.example.com:443/global?token=abc&v=2#frag"),
            "wss://***@api.example.com:443/global?token=***&v=***"
        );
        assert_eq!(url("ws://host/path?abcdef"), "ws://host/path?***");
        assert_eq!(url("ws://127.0.0.1:9/global"), "ws://127.0.0.1:9/global");
        assert_eq!(url("not a url"), "not a url");
        assert_eq!(url("u:p@host/t?token=x"), "***@host/t?token=***");
    }

    #[test]
    fn masks_urls_inside_text() {
        assert_eq!(
            text("\"ws://u:p@h/t?token=x\" is plaintext but Global is wss://"),
            "\"ws://***@h/t?token=***\" is plaintext but Global is wss://"
        );
        assert_eq!(
            text("connect WSS://h/?k=v failed"),
            "connect WSS://h/?k=*** failed"
        );
        assert_eq!(text("no url here"), "no url here");
    }
}
