//! `http.route` for server requests: the route templates the user names (`--route
//! /users/{id}`), and, only when asked for (`--route-heuristic`), a template guessed by folding
//! the path segments that look like identifiers. Without either no route is reported: a raw
//! path is never used in its place, so routes cannot multiply metric series.

use std::sync::Arc;

/// One route template, split into segments.
#[derive(Debug, Clone)]
struct Template {
    text: Arc<str>,
    segments: Vec<Segment>,
    literals: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}`: any one non-empty segment.
    Param,
    /// A final `*`: any remaining segments, none included.
    Rest,
}

/// A malformed `--route` template.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("a route template starts with '/': {0:?}")]
    NoSlash(String),
    #[error("'*' may only be a route template's last segment: {0:?}")]
    RestNotLast(String),
    #[error("a route template's segment is a literal, '{{name}}' or a final '*': {0:?}")]
    BadSegment(String),
}

impl Template {
    fn parse(text: &str) -> Result<Self, RouteError> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(RouteError::NoSlash(text.to_string()));
        };
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        let mut segments = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            let segment = if *p == "*" {
                if i + 1 != parts.len() {
                    return Err(RouteError::RestNotLast(text.to_string()));
                }
                Segment::Rest
            } else if let Some(name) = p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if name.is_empty() || name.contains(['{', '}']) {
                    return Err(RouteError::BadSegment(text.to_string()));
                }
                Segment::Param
            } else if p.contains(['{', '}', '*', '?', '#']) {
                return Err(RouteError::BadSegment(text.to_string()));
            } else {
                Segment::Literal((*p).to_string())
            };
            segments.push(segment);
        }
        let literals = segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        Ok(Template {
            text: text.into(),
            segments,
            literals,
        })
    }

    fn matches(&self, path: &[&str]) -> bool {
        let mut i = 0;
        for s in &self.segments {
            match s {
                Segment::Rest => return true,
                Segment::Param => {
                    if path.get(i).is_none_or(|p| p.is_empty()) {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if path.get(i) != Some(&l.as_str()) {
                        return false;
                    }
                }
            }
            i += 1;
        }
        i == path.len()
    }
}

/// How server requests get `http.route`.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    templates: Vec<Template>,
    heuristic: bool,
}

impl Routes {
    /// The templates given (in order), and whether to guess a route for paths none matches.
    pub fn new(templates: &[String], heuristic: bool) -> Result<Self, RouteError> {
        Ok(Routes {
            templates: templates
                .iter()
                .map(|t| Template::parse(t))
                .collect::<Result<_, _>>()?,
            heuristic,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.templates.is_empty() && !self.heuristic
    }

    /// The route of a request path (no query): the matching template with the most literal
    /// segments (the first given, on a tie), else the guessed template when guessing is on.
    pub fn route_of(&self, path: &str) -> Option<Arc<str>> {
        if self.is_empty() {
            return None;
        }
        let segments: Vec<&str> = match path.strip_prefix('/') {
            Some("") => Vec::new(),
            Some(rest) => rest.split('/').collect(),
            None => return None,
        };
        let mut best: Option<&Template> = None;
        for t in &self.templates {
            if t.matches(&segments) && best.is_none_or(|b| t.literals > b.literals) {
                best = Some(t);
            }
        }
        if let Some(t) = best {
            return Some(t.text.clone());
        }
        if !self.heuristic {
            return None;
        }
        let mut out = String::with_capacity(path.len());
        for s in &segments {
            out.push('/');
            out.push_str(if looks_like_id(s) { "{id}" } else { s });
        }
        if out.is_empty() {
            out.push('/');
        }
        Some(out.into())
    }
}

/// Whether a path segment looks like an identifier rather than a fixed name: a number, a
/// UUID, or a long token of hex or base64url characters with a digit in it. (Percent-encoded
/// or other unusual segments are also folded, so that they cannot multiply routes.)
fn looks_like_id(segment: &str) -> bool {
    let b = segment.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    let is_uuid = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    if is_uuid {
        return true;
    }
    let token = b
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_');
    if !token {
        return true;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    (b.len() >= 16 && digits > 0)
        || (b.len() >= 8 && b.iter().all(u8::is_ascii_hexdigit) && digits > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(t: &[&str], heuristic: bool) -> Routes {
        let t: Vec<String> = t.iter().map(|s| s.to_string()).collect();
        Routes::new(&t, heuristic).unwrap()
    }

    #[test]
    fn templates_match_whole_paths_and_the_most_literal_wins() {
        let r = routes(
            &["/users/{id}", "/users/me", "/static/*", "/", "/a/{x}/b"],
            false,
        );
        let route = |p: &str| r.route_of(p).map(|s| s.to_string());
        assert_eq!(route("/users/42").as_deref(), Some("/users/{id}"));
        assert_eq!(route("/users/me").as_deref(), Some("/users/me"));
        assert_eq!(route("/users/42/orders"), None);
        assert_eq!(route("/users/"), None, "a parameter is never empty");
        assert_eq!(route("/users"), None);
        assert_eq!(route("/static").as_deref(), Some("/static/*"));
        assert_eq!(route("/static/css/x.css").as_deref(), Some("/static/*"));
        assert_eq!(route("/").as_deref(), Some("/"));
        assert_eq!(route("/a/1/b").as_deref(), Some("/a/{x}/b"));
        assert_eq!(route("/other"), None, "no template, no guessing: no route");
        assert_eq!(route("*"), None, "not a path");
    }

    #[test]
    fn nothing_configured_means_no_route() {
        let r = Routes::default();
        assert!(r.is_empty());
        assert_eq!(r.route_of("/users/42"), None);
    }

    #[test]
    fn the_heuristic_folds_identifiers_only() {
        let r = routes(&["/users/{user}"], true);
        let route = |p: &str| r.route_of(p).unwrap().to_string();
        assert_eq!(
            route("/users/42"),
            "/users/{user}",
            "a template comes first"
        );
        assert_eq!(route("/orders/42/items/7"), "/orders/{id}/items/{id}");
        assert_eq!(route("/o/123e4567-e89b-12d3-a456-426614174000"), "/o/{id}");
        assert_eq!(route("/blob/9f86d081884c7d65"), "/blob/{id}");
        assert_eq!(route("/t/eyJhbGciOiJIUzI1NiJ9abc1"), "/t/{id}");
        assert_eq!(route("/t/a%20b"), "/t/{id}", "unusual segments are folded");
        assert_eq!(route("/api/v2/health-check"), "/api/v2/health-check");
        assert_eq!(
            route("/deadbeef"),
            "/deadbeef",
            "hex without a digit is a word"
        );
        assert_eq!(route("/"), "/");
        assert_eq!(route("/a//b"), "/a//b");
    }

    #[test]
    fn malformed_templates_are_refused() {
        for (bad, want) in [
            ("users/{id}", RouteError::NoSlash("users/{id}".into())),
            ("/a/*/b", RouteError::RestNotLast("/a/*/b".into())),
            ("/a/{}", RouteError::BadSegment("/a/{}".into())),
            ("/a/x{id}", RouteError::BadSegment("/a/x{id}".into())),
            ("/a/{i{d}", RouteError::BadSegment("/a/{i{d}".into())),
            ("/a?b", RouteError::BadSegment("/a?b".into())),
        ] {
            let err = Routes::new(&[bad.to_string()], false).unwrap_err();
            assert_eq!(err, want, "{bad}");
        }
    }
}
