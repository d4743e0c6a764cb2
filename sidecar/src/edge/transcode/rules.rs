//! Reads each method's `google.api.http` option out of a descriptor pool
//! (extension 72295728 of `google.protobuf.MethodOptions`, through
//! prost-reflect's extension support) and checks it whole against the
//! request and response messages: every binding the gateway serves has its
//! template parsed and its fields resolved before the first request.

use prost::Message as _;
use prost_reflect::{
    DescriptorPool, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor, Value,
};

use super::error::{RuleError, TranscodeError};
use super::template::PathTemplate;

/// The extension's full name, as google/api/annotations.proto declares it.
const HTTP_OPTION: &str = "google.api.http";

/// One REST binding of a gRPC method.
#[derive(Debug)]
pub struct Binding {
    pub(super) method: MethodDescriptor,
    pub(super) grpc_path: String,
    /// The same, as the gRPC request's URI path.
    pub(super) grpc_uri: http::uri::PathAndQuery,
    pub(super) http_method: http::Method,
    pub(super) template: PathTemplate,
    /// The resolved field path of each template variable, in its order.
    pub(super) path_fields: Vec<FieldPath>,
    pub(super) body: Body,
    pub(super) response_body: Option<FieldDescriptor>,
    /// Declaration order in the descriptor set: breaks ties between
    /// equally specific templates.
    pub(super) order: usize,
}

/// What the HTTP body maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    None,
    /// `*`: every field the path does not bind.
    All,
    /// One top-level field of the request.
    Field(FieldDescriptor),
}

/// A chain of fields from the request message to a leaf (`page.size`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(pub Vec<FieldDescriptor>);

impl FieldPath {
    pub fn name(&self) -> String {
        self.0
            .iter()
            .map(FieldDescriptor::name)
            .collect::<Vec<_>>()
            .join(".")
    }

    /// Whether one path is the other or leads to it (`page` and `page.size`).
    pub fn overlaps(&self, other: &FieldPath) -> bool {
        self.0.starts_with(&other.0) || other.0.starts_with(&self.0)
    }
}

impl Binding {
    /// The gRPC path, `/package.Service/Method`.
    pub fn grpc_path(&self) -> &str {
        &self.grpc_path
    }

    pub fn http_method(&self) -> &http::Method {
        &self.http_method
    }

    /// The path template as written in the option.
    pub fn template(&self) -> &str {
        self.template.as_str()
    }

    /// The gRPC method's full name (`restaurant.v1.Orders.GetOrder`).
    pub fn method_name(&self) -> &str {
        self.method.full_name()
    }

    /// Whether the method streams its replies (answered as a JSON array).
    pub fn is_server_streaming(&self) -> bool {
        self.method.is_server_streaming()
    }
}

/// `google.api.HttpRule`, decoded from the option prost-reflect read.
#[derive(Clone, PartialEq, prost::Message)]
struct HttpRule {
    #[prost(string, tag = "1")]
    selector: String,
    #[prost(oneof = "Pattern", tags = "2, 3, 4, 5, 6, 8")]
    pattern: Option<Pattern>,
    #[prost(string, tag = "7")]
    body: String,
    #[prost(string, tag = "12")]
    response_body: String,
    #[prost(message, repeated, tag = "11")]
    additional_bindings: Vec<HttpRule>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Pattern {
    #[prost(string, tag = "2")]
    Get(String),
    #[prost(string, tag = "3")]
    Put(String),
    #[prost(string, tag = "4")]
    Post(String),
    #[prost(string, tag = "5")]
    Delete(String),
    #[prost(string, tag = "6")]
    Patch(String),
    #[prost(message, tag = "8")]
    Custom(CustomHttpPattern),
}

#[derive(Clone, PartialEq, prost::Message)]
struct CustomHttpPattern {
    #[prost(string, tag = "1")]
    kind: String,
    #[prost(string, tag = "2")]
    path: String,
}

/// Every binding of every annotated method, in declaration order.
pub fn read(pool: &DescriptorPool) -> Result<Vec<Binding>, TranscodeError> {
    let ext = pool
        .get_extension_by_name(HTTP_OPTION)
        .ok_or(TranscodeError::NoHttpExtension)?;
    let mut bindings = Vec::new();
    for service in pool.services() {
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&ext) {
                continue;
            }
            let fail = |problem| TranscodeError::Rule {
                method: method.full_name().to_owned(),
                problem,
            };
            let bytes = match options.get_extension(&ext).as_ref() {
                Value::Message(m) => m.encode_to_vec(),
                _ => Vec::new(),
            };
            let rule = HttpRule::decode(bytes.as_slice()).map_err(|e| fail(e.into()))?;
            if method.is_client_streaming() {
                return Err(fail(RuleError::ClientStreaming));
            }
            let mut push = |rule: &HttpRule| -> Result<(), TranscodeError> {
                let order = bindings.len();
                bindings.push(binding(&method, rule, order).map_err(fail)?);
                Ok(())
            };
            push(&rule)?;
            for extra in &rule.additional_bindings {
                if !extra.additional_bindings.is_empty() {
                    return Err(fail(RuleError::NestedAdditionalBindings));
                }
                push(extra)?;
            }
        }
    }
    if bindings.is_empty() {
        return Err(TranscodeError::NoBindings);
    }
    Ok(bindings)
}

fn binding(method: &MethodDescriptor, rule: &HttpRule, order: usize) -> Result<Binding, RuleError> {
    let (http_method, source) = match rule.pattern.as_ref().ok_or(RuleError::NoPattern)? {
        Pattern::Get(p) => (http::Method::GET, p),
        Pattern::Put(p) => (http::Method::PUT, p),
        Pattern::Post(p) => (http::Method::POST, p),
        Pattern::Delete(p) => (http::Method::DELETE, p),
        Pattern::Patch(p) => (http::Method::PATCH, p),
        Pattern::Custom(c) => (
            http::Method::from_bytes(c.kind.as_bytes())
                .map_err(|_| RuleError::BadMethod(c.kind.clone()))?,
            &c.path,
        ),
    };
    let template = PathTemplate::parse(source).map_err(|problem| RuleError::Template {
        template: source.clone(),
        problem,
    })?;
    let input = method.input();
    let path_fields = template
        .variables()
        .iter()
        .map(|v| path_field(&input, source, &v.field_path))
        .collect::<Result<Vec<_>, _>>()?;
    let body = match rule.body.as_str() {
        "" => Body::None,
        "*" => Body::All,
        name => Body::Field(input.get_field_by_name(name).ok_or_else(|| {
            RuleError::UnknownBodyField {
                message: input.full_name().to_owned(),
                field: name.to_owned(),
            }
        })?),
    };
    let output = method.output();
    let response_body =
        match rule.response_body.as_str() {
            "" => None,
            name => Some(output.get_field_by_name(name).ok_or_else(|| {
                RuleError::UnknownResponseField {
                    message: output.full_name().to_owned(),
                    field: name.to_owned(),
                }
            })?),
        };
    let grpc_path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    let grpc_uri = grpc_path
        .parse()
        .map_err(|_| RuleError::BadGrpcPath(grpc_path.clone()))?;
    Ok(Binding {
        grpc_path,
        grpc_uri,
        method: method.clone(),
        http_method,
        template,
        path_fields,
        body,
        response_body,
        order,
    })
}

/// Resolves a template variable's field path by proto field names: each
/// step but the last a singular message, the last a singular scalar.
fn path_field(
    input: &MessageDescriptor,
    template: &str,
    names: &[String],
) -> Result<FieldPath, RuleError> {
    let mut message = input.clone();
    let mut fields = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let field = message
            .get_field_by_name(name)
            .ok_or_else(|| RuleError::UnknownPathField {
                template: template.to_owned(),
                message: message.full_name().to_owned(),
                field: name.clone(),
            })?;
        let last = i + 1 == names.len();
        let usable = !field.is_list()
            && !field.is_map()
            && match field.kind() {
                Kind::Message(m) if !last => {
                    message = m;
                    true
                }
                kind => last && is_scalar(&kind),
            };
        if !usable {
            return Err(RuleError::NotScalarPathField {
                template: template.to_owned(),
                field: names[..=i].join("."),
            });
        }
        fields.push(field);
    }
    Ok(FieldPath(fields))
}

/// Whether a value of this kind can be written as one string (a path
/// segment or a query value): scalars, enums, and the well-known types
/// whose JSON form is a string, number or bool.
pub fn is_scalar(kind: &Kind) -> bool {
    match kind {
        Kind::Message(m) => matches!(
            m.full_name(),
            "google.protobuf.Timestamp"
                | "google.protobuf.Duration"
                | "google.protobuf.FieldMask"
                | "google.protobuf.DoubleValue"
                | "google.protobuf.FloatValue"
                | "google.protobuf.Int64Value"
                | "google.protobuf.UInt64Value"
                | "google.protobuf.Int32Value"
                | "google.protobuf.UInt32Value"
                | "google.protobuf.BoolValue"
                | "google.protobuf.StringValue"
                | "google.protobuf.BytesValue"
        ),
        _ => true,
    }
}
