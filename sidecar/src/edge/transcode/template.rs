//! `google.api.http` path templates, parsed once when the descriptor set is
//! loaded and matched against each request's path.
//!
//! The grammar (from the HttpRule specification):
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```
//!
//! `{id}` is `{id=*}`; `*` is one segment, `**` zero or more and only last.
//! A variable over one segment is fully percent-decoded; over several, `%2F`
//! stays encoded (reserved expansion).

use std::cmp::Ordering;

use thiserror::Error;

use super::percent::{self, DecodeError, Mode};

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one non-empty segment.
    One,
    /// `**`: the rest of the path, zero or more segments.
    Rest,
}

/// A `{field.path=...}` variable: the template segments it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// The field path as written, split at dots (`order.id` → `order`, `id`).
    pub field_path: Vec<String>,
    start: usize,
    end: usize,
}

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    #[error("must start with '/'")]
    NoLeadingSlash,
    #[error("an empty segment")]
    EmptySegment,
    #[error("'**' must be the last segment")]
    RestNotLast,
    #[error("a '{{' without its '}}'")]
    Unclosed,
    #[error("a '}}' without its '{{'")]
    Unopened,
    #[error("a variable inside a variable")]
    Nested,
    #[error("'{0}' is not a field path")]
    BadFieldPath(String),
    #[error("the variable '{0}' appears twice")]
    DuplicateVariable(String),
    #[error("'{0}' is not a literal segment")]
    BadLiteral(String),
    #[error("an empty verb after ':'")]
    EmptyVerb,
}

/// A variable whose value in a matched path does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadVariable<'t> {
    pub variable: &'t Variable,
    pub error: DecodeError,
}

/// A variable's value in a matched path, percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture<'t> {
    pub variable: &'t Variable,
    pub value: String,
}

impl PathTemplate {
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let rest = source
            .strip_prefix('/')
            .ok_or(TemplateError::NoLeadingSlash)?;
        let (body, verb) = split_verb(rest)?;
        let mut t = PathTemplate {
            source: source.to_owned(),
            segments: Vec::new(),
            variables: Vec::new(),
            verb,
        };
        for piece in split_top(body)? {
            if let Some(inner) = piece.strip_prefix('{') {
                let inner = inner.strip_suffix('}').ok_or(TemplateError::Unclosed)?;
                t.push_variable(inner)?;
            } else {
                t.segments.push(segment(piece)?);
            }
        }
        let last = t.segments.len().saturating_sub(1);
        if t.segments[..last].contains(&Segment::Rest) {
            return Err(TemplateError::RestNotLast);
        }
        Ok(t)
    }

    fn push_variable(&mut self, inner: &str) -> Result<(), TemplateError> {
        if inner.contains(['{', '}']) {
            return Err(TemplateError::Nested);
        }
        let (path, pattern) = inner.split_once('=').unwrap_or((inner, "*"));
        let field_path: Vec<String> = path.split('.').map(str::to_owned).collect();
        if !field_path.iter().all(|p| is_ident(p)) {
            return Err(TemplateError::BadFieldPath(path.to_owned()));
        }
        if self.variables.iter().any(|v| v.field_path == field_path) {
            return Err(TemplateError::DuplicateVariable(path.to_owned()));
        }
        let start = self.segments.len();
        for piece in pattern.split('/') {
            self.segments.push(segment(piece)?);
        }
        self.variables.push(Variable {
            field_path,
            start,
            end: self.segments.len(),
        });
        Ok(())
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    /// Matches a request path (without its query); `Ok(None)` when it does
    /// not match, an error naming the variable when it matches but that
    /// variable's value does not decode.
    pub fn matches(&self, path: &str) -> Result<Option<Vec<Capture<'_>>>, BadVariable<'_>> {
        let Some(mut rest) = path.strip_prefix('/') else {
            return Ok(None);
        };
        if let Some(verb) = &self.verb {
            match rest
                .strip_suffix(verb.as_str())
                .and_then(|r| r.strip_suffix(':'))
            {
                Some(r) => rest = r,
                None => return Ok(None),
            }
        }
        let raw: Vec<&str> = rest.split('/').collect();
        // spans[k]: the raw segments template segment k took.
        let mut spans = Vec::with_capacity(self.segments.len());
        let mut i = 0;
        for seg in &self.segments {
            let taken = match seg {
                Segment::Literal(l) => match raw.get(i) {
                    Some(r) if percent::decode(r, Mode::Segment).is_ok_and(|d| d == *l) => 1,
                    _ => return Ok(None),
                },
                Segment::One => match raw.get(i) {
                    Some(r) if !r.is_empty() => 1,
                    _ => return Ok(None),
                },
                Segment::Rest => raw.len().saturating_sub(i),
            };
            spans.push(i..i + taken);
            i += taken;
        }
        if i != raw.len() {
            return Ok(None);
        }
        let mut captures = Vec::with_capacity(self.variables.len());
        for v in &self.variables {
            let from = spans[v.start].start;
            let to = spans[v.end - 1].end;
            let mode = if v.end - v.start == 1 && self.segments[v.start] == Segment::One {
                Mode::Segment
            } else {
                Mode::Segments
            };
            let value = percent::decode(&raw[from..to].join("/"), mode)
                .map_err(|error| BadVariable { variable: v, error })?;
            captures.push(Capture { variable: v, value });
        }
        Ok(Some(captures))
    }

    /// Orders templates by how specific they are, the most specific first:
    /// segment by segment a literal before `*` before the end of the
    /// template before `**` (so `/a` wins over `/a/**` for `/a`), then a
    /// template with a verb before one without. Equal templates compare
    /// equal; the caller breaks the tie by declaration order.
    pub fn specificity(&self, other: &Self) -> Ordering {
        other.rank().cmp(&self.rank()).then_with(|| {
            other
                .verb
                .is_some()
                .cmp(&self.verb.is_some())
                .then_with(|| other.verb.cmp(&self.verb))
        })
    }

    fn rank(&self) -> Vec<u8> {
        let mut r: Vec<u8> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) => 3,
                Segment::One => 2,
                Segment::Rest => 0,
            })
            .collect();
        r.push(1);
        r
    }

    /// Whether two templates take exactly the same paths.
    pub fn same_shape(&self, other: &Self) -> bool {
        self.segments == other.segments && self.verb == other.verb
    }
}

/// Splits `:verb` off the last segment, outside any variable.
fn split_verb(rest: &str) -> Result<(&str, Option<String>), TemplateError> {
    let mut depth = 0usize;
    let mut last_slash = None;
    let mut colon = None;
    for (i, c) in rest.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.checked_sub(1).ok_or(TemplateError::Unopened)?,
            '/' if depth == 0 => {
                last_slash = Some(i);
                colon = None;
            }
            ':' if depth == 0 => colon = Some(i),
            _ => {}
        }
    }
    if depth != 0 {
        return Err(TemplateError::Unclosed);
    }
    match colon {
        Some(i) if last_slash.is_none_or(|s| s < i) => {
            let verb = &rest[i + 1..];
            if verb.is_empty() {
                return Err(TemplateError::EmptyVerb);
            }
            segment(verb)?;
            Ok((&rest[..i], Some(verb.to_owned())))
        }
        _ => Ok((rest, None)),
    }
}

/// Splits at the slashes outside variables.
fn split_top(body: &str) -> Result<Vec<&str>, TemplateError> {
    let mut pieces = Vec::new();
    let mut depth = 0usize;
    let mut from = 0;
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            '/' if depth == 0 => {
                pieces.push(&body[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(&body[from..]);
    for p in &pieces {
        if p.contains(['{', '}']) && !(p.starts_with('{') && p.ends_with('}')) {
            return Err(TemplateError::BadLiteral((*p).to_owned()));
        }
    }
    Ok(pieces)
}

fn segment(piece: &str) -> Result<Segment, TemplateError> {
    match piece {
        "" => Err(TemplateError::EmptySegment),
        "*" => Ok(Segment::One),
        "**" => Ok(Segment::Rest),
        l if l.contains(['*', '{', '}', '=', ':', '?', '#']) => {
            Err(TemplateError::BadLiteral(l.to_owned()))
        }
        l => Ok(Segment::Literal(
            percent::decode(l, Mode::Segment)
                .map_err(|_| TemplateError::BadLiteral(l.to_owned()))?,
        )),
    }
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> PathTemplate {
        PathTemplate::parse(s).expect("template")
    }

    /// The captures as `field.path=value` strings, or `None` for no match.
    fn m(template: &str, path: &str) -> Option<Vec<String>> {
        let t = t(template);
        let captures = t.matches(path).expect("decodes")?;
        Some(
            captures
                .iter()
                .map(|c| format!("{}={}", c.variable.field_path.join("."), c.value))
                .collect(),
        )
    }

    #[test]
    fn literal_segments() {
        assert_eq!(m("/api/orders", "/api/orders"), Some(vec![]));
        assert_eq!(m("/api/orders", "/api/orders/"), None);
        assert_eq!(m("/api/orders", "/api/order"), None);
        assert_eq!(m("/api/orders", "/api"), None);
        assert_eq!(m("/api/orders", "api/orders"), None);
        assert_eq!(m("/api/caf%C3%A9", "/api/caf%c3%a9"), Some(vec![]));
    }

    #[test]
    fn a_field_takes_one_decoded_segment() {
        assert_eq!(
            m("/api/orders/{id}", "/api/orders/42"),
            Some(vec!["id=42".into()])
        );
        assert_eq!(
            m("/api/orders/{id}", "/api/orders/a%2Fb%20c"),
            Some(vec!["id=a/b c".into()])
        );
        assert_eq!(m("/api/orders/{id}", "/api/orders/"), None);
        assert_eq!(m("/api/orders/{id}", "/api/orders/1/2"), None);
    }

    #[test]
    fn nested_fields_and_several_variables() {
        assert_eq!(
            m(
                "/users/{order.user_id}/orders/{order.id}",
                "/users/7/orders/9"
            ),
            Some(vec!["order.user_id=7".into(), "order.id=9".into()])
        );
    }

    #[test]
    fn a_variable_over_segments_keeps_escaped_slashes() {
        let tpl = "/api/{name=shops/*/dishes/*}";
        assert_eq!(
            m(tpl, "/api/shops/s1/dishes/soup%2Fhot"),
            Some(vec!["name=shops/s1/dishes/soup%2Fhot".into()])
        );
        assert_eq!(m(tpl, "/api/shops/s1/menus/soup"), None);
        assert_eq!(m(tpl, "/api/shops/s1/dishes"), None);
    }

    #[test]
    fn wildcards() {
        assert_eq!(m("/api/dishes/*", "/api/dishes/x"), Some(vec![]));
        assert_eq!(m("/api/dishes/*", "/api/dishes/x/y"), None);
        assert_eq!(m("/api/files/**", "/api/files"), Some(vec![]));
        assert_eq!(m("/api/files/**", "/api/files/a/b/c"), Some(vec![]));
        assert_eq!(
            m("/api/files/{path=**}", "/api/files/a/b%2Fc/d"),
            Some(vec!["path=a/b%2Fc/d".into()])
        );
        assert_eq!(
            m("/api/files/{path=**}", "/api/files"),
            Some(vec!["path=".into()])
        );
        assert_eq!(
            m("/v1/{name=projects/*/**}", "/v1/projects/p/x/y"),
            Some(vec!["name=projects/p/x/y".into()])
        );
    }

    #[test]
    fn verbs() {
        let tpl = "/api/orders/{id}:cancel";
        assert_eq!(m(tpl, "/api/orders/42:cancel"), Some(vec!["id=42".into()]));
        assert_eq!(
            m(tpl, "/api/orders/4:2:cancel"),
            Some(vec!["id=4:2".into()])
        );
        assert_eq!(m(tpl, "/api/orders/42"), None);
        assert_eq!(m(tpl, "/api/orders/42:undo"), None);
        assert_eq!(m(tpl, "/api/orders/:cancel"), None);
        assert_eq!(m("/api/orders:watch", "/api/orders:watch"), Some(vec![]));
        assert_eq!(m("/api/orders", "/api/orders:watch"), None);
        assert_eq!(
            m("/v1/{name=files/**}:get", "/v1/files/a/b:get"),
            Some(vec!["name=files/a/b".into()])
        );
    }

    /// Every short path over an alphabet of the characters that matter
    /// (separators, escapes, verbs): the matcher never panics, and what a
    /// one-segment variable captures has no separator left in it unless the
    /// client escaped one.
    #[test]
    fn no_short_path_upsets_the_matcher() {
        let templates: Vec<PathTemplate> = [
            "/a/{x}",
            "/a/{x}:v",
            "/{x=a/*}/**",
            "/{x=**}:v",
            "/*/{x.y}/a",
        ]
        .iter()
        .map(|s| t(s))
        .collect();
        let alphabet = ['/', 'a', '%', '2', 'F', ':', 'v'];
        let mut paths = vec![String::new()];
        for _ in 0..5 {
            let longer: Vec<String> = paths
                .iter()
                .flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}")))
                .collect();
            paths.extend(longer);
            paths.dedup();
        }
        for path in &paths {
            for tpl in &templates {
                if let Ok(Some(captures)) = tpl.matches(path)
                    && tpl.as_str().starts_with("/a/{x}")
                {
                    assert!(!captures[0].value.contains('/') || path.contains("%2F"));
                }
            }
        }
    }

    #[test]
    fn bad_templates_say_why() {
        let e = |s: &str| PathTemplate::parse(s).expect_err(s);
        assert_eq!(e("api/orders"), TemplateError::NoLeadingSlash);
        assert_eq!(e("/api//orders"), TemplateError::EmptySegment);
        assert_eq!(e("/api/orders/"), TemplateError::EmptySegment);
        assert_eq!(e("/api/**/x"), TemplateError::RestNotLast);
        assert_eq!(e("/api/{id=**}/x"), TemplateError::RestNotLast);
        assert_eq!(e("/api/{id"), TemplateError::Unclosed);
        assert_eq!(e("/api/id}"), TemplateError::Unopened);
        assert_eq!(e("/api/{a={b}}"), TemplateError::Nested);
        assert_eq!(e("/api/{1a}"), TemplateError::BadFieldPath("1a".into()));
        assert_eq!(e("/api/{a..b}"), TemplateError::BadFieldPath("a..b".into()));
        assert_eq!(e("/{a}/{a}"), TemplateError::DuplicateVariable("a".into()));
        assert_eq!(e("/api/x{id}"), TemplateError::BadLiteral("x{id}".into()));
        assert_eq!(e("/api/a*"), TemplateError::BadLiteral("a*".into()));
        assert_eq!(e("/api/orders:"), TemplateError::EmptyVerb);
        assert_eq!(e("/api/{id=}"), TemplateError::EmptySegment);
    }

    #[test]
    fn the_most_specific_template_sorts_first() {
        let mut ts: Vec<PathTemplate> = [
            "/api/**",
            "/api/{id}",
            "/api/orders",
            "/api/{id}:cancel",
            "/api",
            "/api/orders/{id}",
            "/api/*/items",
        ]
        .iter()
        .map(|s| t(s))
        .collect();
        ts.sort_by(PathTemplate::specificity);
        let order: Vec<&str> = ts.iter().map(PathTemplate::as_str).collect();
        assert_eq!(
            order,
            [
                "/api/orders/{id}",
                "/api/orders",
                "/api/*/items",
                "/api/{id}:cancel",
                "/api/{id}",
                "/api",
                "/api/**",
            ]
        );
        assert_eq!(t("/a/{x}").specificity(&t("/a/{y}")), Ordering::Equal);
        assert!(t("/a/{x}").same_shape(&t("/a/*")));
        assert!(!t("/a/{x}").same_shape(&t("/a/{x}:v")));
    }
}
