//! Raw options → the validated job model: names, version, options, and each
//! parameter with its version, aliases and default. Every check reports
//! into the [`Ctxt`] and goes on, so one build shows every mistake.

use std::collections::HashSet;

use proc_macro2::{Delimiter, TokenStream, TokenTree};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    Attribute, Expr, FnArg, GenericArgument, Ident, ItemFn, LitInt, LitStr, Pat, Path, PathArguments, ReturnType,
    Signature, Type, Visibility,
};

use crate::ctxt::Ctxt;
use crate::parse::{DefaultValue, Input, ParamOptions};

/// A validated `#[job]`.
pub(crate) struct Job {
    /// The function's name as written (`r#type` stays raw).
    pub(crate) fn_ident: Ident,
    /// The generated struct's name, in PascalCase.
    pub(crate) struct_ident: Ident,
    pub(crate) vis: Visibility,
    /// The function's `#[doc]` attributes.
    pub(crate) docs: Vec<Attribute>,
    /// The function's `#[cfg]` attributes, repeated on every generated item.
    pub(crate) cfgs: Vec<Attribute>,
    /// The registered name.
    pub(crate) name: String,
    pub(crate) aliases: Vec<String>,
    pub(crate) queue: String,
    pub(crate) version: u32,
    pub(crate) retries: Option<u32>,
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) unique_for_ms: Option<u64>,
    /// `keep_result`: `None` when not written (the default depends on the
    /// return type), `Some(None)` for `false`, `Some(Some(ms))` for a duration.
    pub(crate) keep_result: Option<Option<u64>>,
    pub(crate) migrate: Option<Path>,
    /// The function's inputs in declaration order.
    pub(crate) inputs: Vec<JobInput>,
    pub(crate) output: Output,
}

/// One input of the function.
pub(crate) enum JobInput {
    /// A serialized argument.
    Arg(Box<Param>),
    /// The injected `&JobContext`.
    Context,
}

/// A serialized argument.
pub(crate) struct Param {
    /// The name as written (raw identifiers stay raw), without `mut`.
    pub(crate) ident: Ident,
    /// The key in `args`.
    pub(crate) name: String,
    pub(crate) ty: Type,
    /// The type as written, spaces normalised (`Vec<u64>`).
    pub(crate) ty_string: String,
    pub(crate) since: u32,
    pub(crate) explicit_since: bool,
    pub(crate) aliases: Vec<String>,
    pub(crate) default: Option<ParamDefault>,
}

/// Where a parameter's default comes from.
pub(crate) enum ParamDefault {
    /// `default = EXPR`.
    Expr(Expr),
    /// Bare `default`: `Default::default()`; the ident is the keyword, for spans.
    Trait(Ident),
}

/// What the function returns.
pub(crate) enum Output {
    /// No return type, or `()`.
    Unit,
    /// `-> T`.
    Type(Box<Type>),
    /// `-> Result<T, E>` with an error that is only a message (`String`,
    /// `&str`, `Box<dyn Error>`, `anyhow::Error`): none converts into
    /// `JobError` (Rust's coherence rules forbid the impls), so the
    /// generated code turns it into `JobError::new` of its text. Holds the
    /// whole type and `T`, and whether the error is a `Box<dyn Error>`
    /// (converted keeping what it holds: a `JobError` sent through `?`, or
    /// the error itself as the source).
    Message(Box<Type>, Box<Type>, bool),
}

impl Output {
    /// The return type as written, when there is one.
    pub(crate) fn written(&self) -> Option<&Type> {
        match self {
            Output::Unit => None,
            Output::Type(ty) | Output::Message(ty, ..) => Some(ty),
        }
    }
}

/// The `T` of a `Result<T, E>` whose `E` is only a message, or of
/// `anyhow::Result<T>` / `eyre::Result<T>`, written out: a type alias hides
/// it, and then the return type must convert into `JobError` as any other.
fn message_result_ok(ty: &Type) -> Option<(&Type, bool)> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last().filter(|last| path.qself.is_none() && last.ident == "Result")?;
    let PathArguments::AngleBracketed(args) = &last.arguments else { return None };
    let types: Vec<&Type> = args
        .args
        .iter()
        .filter_map(|arg| match arg {
            GenericArgument::Type(ty) => Some(ty),
            _ => None,
        })
        .collect();
    let first = path.path.segments.first().map(|first| first.ident.to_string());
    match types.as_slice() {
        [ok, error] => message_error(error).map(|boxed| (*ok, boxed)),
        [ok] if path.path.segments.len() == 2 && matches!(first.as_deref(), Some("anyhow" | "eyre")) => {
            Some((ok, false))
        }
        _ => None,
    }
}

/// Whether `ty` is an error that is only a message (`String`, `&str`,
/// `anyhow::Error`, `eyre::Report`: `Some(false)`) or a `Box<dyn … Error …>`
/// (`Some(true)`); `None` for any other type.
fn message_error(ty: &Type) -> Option<bool> {
    let path = match ty {
        Type::Reference(reference) => {
            return matches!(&*reference.elem, Type::Path(path) if path.path.is_ident("str")).then_some(false);
        }
        Type::Path(path) if path.qself.is_none() => &path.path,
        _ => return None,
    };
    let last = path.segments.last()?;
    let names: Vec<String> = path.segments.iter().map(|segment| segment.ident.to_string()).collect();
    match names.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["anyhow", "Error"] | ["eyre", "Report"] => Some(false),
        [.., "String"] => last.arguments.is_none().then_some(false),
        [.., "Box"] => boxes_dyn_error(&last.arguments).then_some(true),
        _ => None,
    }
}

/// Whether the arguments of a `Box<…>` are a `dyn` trait object with an `…Error` bound.
fn boxes_dyn_error(arguments: &PathArguments) -> bool {
    let PathArguments::AngleBracketed(args) = arguments else { return false };
    let is_error = |bound: &syn::TypeParamBound| matches!(bound, syn::TypeParamBound::Trait(t) if t.path.segments.last().is_some_and(|s| s.ident == "Error"));
    args.args.iter().any(
        |arg| matches!(arg, GenericArgument::Type(Type::TraitObject(object)) if object.bounds.iter().any(is_error)),
    )
}

impl Job {
    /// The serialized arguments, in declaration order.
    pub(crate) fn params(&self) -> impl Iterator<Item = &Param> {
        self.inputs.iter().filter_map(|input| match input {
            JobInput::Arg(param) => Some(&**param),
            JobInput::Context => None,
        })
    }
}

/// Validates the input. Returns the model even when errors were recorded, as
/// far as it could be built; the caller checks the [`Ctxt`].
pub(crate) fn build(cx: &Ctxt, input: &Input) -> Job {
    let func = &input.func;
    let options = &input.options;
    check_signature(cx, &func.sig);

    let fn_ident = func.sig.ident.clone();
    let fn_name = fn_ident.unraw().to_string();
    let struct_ident = struct_ident(cx, &fn_ident);

    let name = options.name.as_ref().map_or_else(|| fn_name.clone(), |lit| non_empty(cx, lit, "name", "\"send_sms\""));
    let queue =
        options.queue.as_ref().map_or_else(|| "default".to_owned(), |lit| non_empty(cx, lit, "queue", "\"critical\""));
    let aliases = job_aliases(cx, options.aliases.as_deref().unwrap_or_default(), &name);
    let version = options.version.as_ref().map_or(1, |lit| version(cx, lit));
    // An unreadable `version` was reported: no `since` is "above" a version we cannot read.
    let since_limit = if options.version_unreadable { u32::MAX } else { version };
    let retries = options.retries.as_ref().and_then(|lit| int(cx, lit, "retries"));
    let timeout_ms = options.timeout.as_ref().and_then(|lit| duration(cx, lit, "timeout"));
    let unique_for_ms = options.unique_for.as_ref().and_then(|lit| duration(cx, lit, "unique_for"));
    let keep_result = options.keep_result.as_ref().and_then(|lit| keep_result(cx, lit));
    let migrate = options.migrate.clone();

    let inputs = inputs(cx, func, &input.params, since_limit, migrate.is_some());
    let output = match &func.sig.output {
        ReturnType::Default => Output::Unit,
        ReturnType::Type(_, ty) if matches!(&**ty, Type::Tuple(unit) if unit.elems.is_empty()) => Output::Unit,
        ReturnType::Type(_, ty) => match message_result_ok(ty) {
            Some((ok, boxed)) => Output::Message(ty.clone(), Box::new(ok.clone()), boxed),
            None => Output::Type(ty.clone()),
        },
    };

    Job {
        fn_ident,
        struct_ident,
        vis: func.vis.clone(),
        docs: attrs_named(func, "doc"),
        cfgs: attrs_named(func, "cfg"),
        name,
        aliases,
        queue,
        version,
        retries,
        timeout_ms,
        unique_for_ms,
        keep_result,
        migrate,
        inputs,
        output,
    }
}

fn attrs_named(func: &ItemFn, name: &str) -> Vec<Attribute> {
    func.attrs.iter().filter(|attr| attr.path().is_ident(name)).cloned().collect()
}

/// The function itself: async, not const/unsafe/extern, no generics.
fn check_signature(cx: &Ctxt, sig: &Signature) {
    if let Some(constness) = &sig.constness {
        cx.error(constness.span, "a #[job] function cannot be `const`: remove `const`");
    }
    if sig.asyncness.is_none() {
        cx.error(sig.fn_token.span, format!("#[job] goes on an `async fn`: write `async fn {}(…)`", sig.ident));
    }
    // (`safe` qualifies items of `unsafe extern` blocks only: a function here never parses with it.)
    if let syn::Safety::Unsafe(token) = &sig.safety {
        cx.error(token.span, "a #[job] function cannot be `unsafe`: a worker calls it with no way to uphold its contract; remove `unsafe`");
    }
    if let Some(abi) = &sig.abi {
        cx.error_spanned(abi, "a #[job] function cannot be `extern`: remove the ABI");
    }
    if let Some(variadic) = &sig.variadic {
        cx.error(variadic.dots.spans[0], "a #[job] function cannot be variadic: remove `...`");
    }
    let generics = &sig.generics;
    if !generics.params.is_empty() {
        let what = if generics.lifetimes().count() == generics.params.len() {
            "lifetime parameters"
        } else {
            "generic parameters"
        };
        cx.error_spanned(
            generics,
            format!("a #[job] function cannot have {what}: a worker decodes the arguments into concrete, owned types; remove them and use concrete types"),
        );
    }
    if let Some(where_clause) = &generics.where_clause {
        cx.error_spanned(
            where_clause,
            "a #[job] function cannot have a `where` clause: remove it and use concrete types",
        );
    }
}

/// Names the job's struct would take that are already taken where jobs are
/// written: the prelude's, and those a job module imports from `jobs_core`.
/// The struct would shadow them, and the errors would point elsewhere.
const TAKEN_NAMES: &[&str] = &[
    "Option",
    "Some",
    "None",
    "Result",
    "Ok",
    "Err",
    "String",
    "Vec",
    "Box",
    "ToString",
    "ToOwned",
    "Clone",
    "Copy",
    "Send",
    "Sync",
    "Sized",
    "Unpin",
    "Drop",
    "Fn",
    "FnMut",
    "FnOnce",
    "Default",
    "Eq",
    "PartialEq",
    "Ord",
    "PartialOrd",
    "Iterator",
    "IntoIterator",
    "Extend",
    "From",
    "Into",
    "TryFrom",
    "TryInto",
    "AsRef",
    "AsMut",
    "Job",
    "JobContext",
    "JobError",
    "JobId",
    "Client",
    "Worker",
];

/// `send_confirmation_sms` → `SendConfirmationSms`, at the function's span.
fn struct_ident(cx: &Ctxt, fn_ident: &Ident) -> Ident {
    let name = pascal_case(&fn_ident.unraw().to_string());
    // Not every name turns into one: `__`, `_1`, `self_` (`Self`), `_٣x`.
    let Ok(mut ident) = syn::parse_str::<Ident>(&name) else {
        cx.error(
            fn_ident.span(),
            format!("cannot name the job's struct after `{fn_ident}`: rename the function, e.g. `send_email`"),
        );
        return Ident::new("__JobUnnamed", fn_ident.span());
    };
    if TAKEN_NAMES.contains(&name.as_str()) {
        cx.error(
            fn_ident.span(),
            format!(
                "the job's struct would be named `{name}`, after the function, and would shadow the `{name}` that is already in scope: rename the function, e.g. `process_{}`",
                fn_ident.unraw()
            ),
        );
        return Ident::new("__JobUnnamed", fn_ident.span());
    }
    ident.set_span(fn_ident.span());
    ident
}

/// Upper-cases the first letter of each `_`-separated word and drops the underscores.
pub(crate) fn pascal_case(snake: &str) -> String {
    snake
        .split('_')
        .flat_map(|word| {
            let mut chars = word.chars();
            chars.next().map(|first| first.to_uppercase().chain(chars))
        })
        .flatten()
        .collect()
}

fn non_empty(cx: &Ctxt, lit: &LitStr, option: &str, example: &str) -> String {
    let value = lit.value();
    if value.trim().is_empty() {
        cx.error(
            lit.span(),
            format!("`{option}` cannot be empty: write a name, e.g. `{option} = {example}`, or remove the option"),
        );
    } else if value.contains(char::is_control) {
        cx.error(
            lit.span(),
            format!(
                "`{option}` cannot hold a control character (a newline, a tab, …): write a name such as `{option} = {example}`"
            ),
        );
    }
    value
}

fn job_aliases(cx: &Ctxt, lits: &[LitStr], name: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut aliases = Vec::new();
    for lit in lits {
        let alias = lit.value();
        if alias.trim().is_empty() {
            cx.error(lit.span(), "an alias cannot be empty: write the job's old name, e.g. `aliases = [\"send_sms\"]`");
        } else if alias == name {
            cx.error(lit.span(), format!("alias `{alias}` is the job's own name: remove it"));
        } else if !seen.insert(alias.clone()) {
            cx.error(lit.span(), format!("alias `{alias}` is listed twice: remove this one"));
        } else {
            aliases.push(alias);
        }
    }
    aliases
}

fn int(cx: &Ctxt, lit: &LitInt, option: &str) -> Option<u32> {
    match lit.base10_parse::<u32>() {
        Ok(value) => Some(value),
        Err(_) => {
            cx.error(lit.span(), format!("`{option}` must be a whole number from 0 to {}", u32::MAX));
            None
        }
    }
}

fn version(cx: &Ctxt, lit: &LitInt) -> u32 {
    match int(cx, lit, "version") {
        Some(0) => {
            cx.error(
                lit.span(),
                "`version = 0` is not allowed: versions start at 1 (the default); write `version = 1` or remove it",
            );
            1
        }
        Some(version) => version,
        None => 1,
    }
}

fn keep_result(cx: &Ctxt, lit: &syn::Lit) -> Option<Option<u64>> {
    match lit {
        syn::Lit::Str(text) => duration(cx, text, "keep_result").map(Some),
        syn::Lit::Bool(flag) if !flag.value => Some(None),
        other => {
            cx.error(
                other.span(),
                "`keep_result` takes a duration string, e.g. `keep_result = \"1h\"`, or `false` to keep no result",
            );
            None
        }
    }
}

fn duration(cx: &Ctxt, lit: &LitStr, option: &str) -> Option<u64> {
    match parse_duration(&lit.value()) {
        Ok(ms) => Some(ms),
        Err(problem) => {
            cx.error(
                lit.span(),
                format!(
                    "invalid `{option}` duration {:?}: {problem}; write an integer followed by a unit (`ms`, `s`, `m`, `h`, `d`), e.g. \"500ms\", \"30s\", \"5m\", \"2h\", \"1d\" or \"1m30s\"",
                    lit.value()
                ),
            );
            None
        }
    }
}

/// Parses `"30s"`, `"1m30s"`, `"500ms"` into milliseconds. Units go from the
/// largest to the smallest, each at most once; the total is above zero.
pub(crate) fn parse_duration(text: &str) -> Result<u64, String> {
    const UNITS: [(&str, u64); 5] = [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];
    if text.is_empty() {
        return Err("it is empty".to_owned());
    }
    let mut rest = text;
    let mut total: u64 = 0;
    let mut last_unit = None;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            if rest.starts_with(char::is_whitespace) {
                return Err("it contains a space".to_owned());
            }
            return Err(format!("expected a number at `{rest}`"));
        }
        let number: u64 = rest[..digits].parse().map_err(|_| "the number is too large".to_owned())?;
        rest = &rest[digits..];
        let unit_len = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_alphabetic()).len();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let Some(index) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(match (unit, rest) {
                ("", "") => format!("`{number}` has no unit"),
                ("", rest) if rest.starts_with(char::is_whitespace) => "it contains a space".to_owned(),
                ("", rest) => format!("unexpected `{rest}`"),
                (unit, _) => format!("unknown unit `{unit}`"),
            });
        };
        if last_unit.is_some_and(|last| index <= last) {
            return Err(format!("unit `{unit}` is repeated or out of order"));
        }
        last_unit = Some(index);
        total = number
            .checked_mul(UNITS[index].1)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| "it is too long".to_owned())?;
    }
    if total == 0 {
        return Err("it is zero".to_owned());
    }
    Ok(total)
}

/// The parameters: names, context injection, versions, aliases, defaults.
fn inputs(cx: &Ctxt, func: &ItemFn, options: &[ParamOptions], version: u32, has_migrate: bool) -> Vec<JobInput> {
    let mut inputs = Vec::new();
    let mut aliases = Vec::new();
    let mut seen_context = false;
    for (arg, options) in func.sig.inputs.iter().zip(options) {
        let arg = match arg {
            FnArg::Receiver(receiver) => {
                cx.error(
                    receiver.self_token.span,
                    "a #[job] function cannot take `self`: jobs are free functions; move it out of the `impl` and pass an id of the value instead",
                );
                continue;
            }
            FnArg::Typed(arg) => arg,
        };
        for attr in arg.attrs.iter().filter(|attr| attr.path().is_ident("cfg") || attr.path().is_ident("cfg_attr")) {
            cx.error_spanned(
                attr,
                "a job parameter cannot be `#[cfg]`-gated: it is a key of the payload, which must read the same in every build; remove the attribute (a parameter some builds do not use can have a default)",
            );
        }
        // The context is not serialized, so its pattern is free (`_: &JobContext` is fine).
        if let Some(context) = context_type(&arg.ty) {
            if seen_context {
                cx.error_spanned(&arg.ty, "a job takes at most one `&JobContext`: remove this parameter");
            } else if let Err(message) = context {
                cx.error_spanned(&arg.ty, message);
            }
            if options.default.is_some() || options.since.is_some() || options.alias.is_some() {
                cx.error_spanned(
                    &arg.ty,
                    "the `&JobContext` parameter is injected, not serialized: remove its `#[job(...)]` options",
                );
            }
            seen_context = true;
            inputs.push(JobInput::Context);
            continue;
        }
        let ident = match &*arg.pat {
            Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => Some(pat.ident.clone()),
            pat => {
                cx.error_spanned(
                    pat,
                    "a job parameter needs a plain name, e.g. `user_id: u64`: the name is its key in the payload; destructure it inside the body",
                );
                None
            }
        };
        check_arg_type(cx, &arg.ty);
        if let Some(ident) = ident {
            let param = param(cx, ident, &arg.ty, options, version, has_migrate);
            aliases.extend(options.alias.iter().map(|lit| (param.name.clone(), lit)));
            inputs.push(JobInput::Arg(Box::new(param)));
        }
    }
    check_param_aliases(cx, &inputs, &aliases);
    inputs
}

/// `Some(Ok)` for `&JobContext`, `Some(Err(fix))` for a context taken another way.
fn context_type(ty: &Type) -> Option<Result<(), &'static str>> {
    let is_context = |ty: &Type| matches!(ty, Type::Path(path) if path.qself.is_none() && path.path.segments.last().is_some_and(|s| s.ident == "JobContext"));
    match ty {
        Type::Reference(reference) if is_context(&reference.elem) => Some(if reference.mutability.is_some() {
            Err("take the context as `&JobContext`, not `&mut JobContext`")
        } else if reference.lifetime.is_some() {
            Err("take the context as `&JobContext`, with no lifetime: it lives as long as the run")
        } else {
            Ok(())
        }),
        ty if is_context(ty) => Some(Err("the context is injected by reference: write `ctx: &JobContext`")),
        _ => None,
    }
}

/// Argument types must be owned and concrete, and keep their value through
/// JSON, inside other types too (`Vec<&str>`); whether they are `JobArg` is
/// left to the trait bound in the generated code.
fn check_arg_type(cx: &Ctxt, ty: &Type) {
    match ty {
        Type::Reference(reference) => {
            let owned = match &*reference.elem {
                Type::Path(path) if path.path.is_ident("str") => "String".to_owned(),
                Type::Slice(slice) => format!("Vec<{}>", type_string(&slice.elem)),
                elem => type_string(elem),
            };
            cx.error_spanned(
                ty,
                format!("a job argument is stored as JSON and decoded later, so it must be owned: write `{owned}`"),
            );
        }
        Type::ImplTrait(_) => cx.error_spanned(ty, "a job argument needs a concrete type, not `impl Trait`"),
        Type::Path(path) if path.qself.is_none() => {
            let Some(last) = path.path.segments.last() else { return };
            let args = match &last.arguments {
                PathArguments::AngleBracketed(args) => args.args.iter().collect(),
                _ => Vec::new(),
            };
            if args.iter().any(|arg| matches!(arg, GenericArgument::Lifetime(_))) {
                cx.error_spanned(
                    ty,
                    "a job argument is stored as JSON and decoded later, so it must be owned: remove the lifetime",
                );
                return;
            }
            let inner: Vec<&Type> = args
                .iter()
                .filter_map(|arg| match arg {
                    GenericArgument::Type(ty) => Some(ty),
                    _ => None,
                })
                .collect();
            if last.ident == "Option" && inner.first().is_some_and(|inner| is_option(inner)) {
                cx.error_spanned(
                    ty,
                    "`Option<Option<T>>` does not survive JSON: `Some(None)` and `None` are both stored as `null`; use one `Option`, or an enum that names each case",
                );
                return;
            }
            for inner in inner {
                check_arg_type(cx, inner);
            }
        }
        Type::Paren(paren) => check_arg_type(cx, &paren.elem),
        Type::Group(group) => check_arg_type(cx, &group.elem),
        Type::Tuple(tuple) => tuple.elems.iter().for_each(|elem| check_arg_type(cx, elem)),
        Type::Array(array) => check_arg_type(cx, &array.elem),
        Type::Slice(slice) => check_arg_type(cx, &slice.elem),
        ty if has_lifetime(ty.to_token_stream()) => {
            cx.error_spanned(
                ty,
                "a job argument is stored as JSON and decoded later, so it must be owned: remove the lifetime",
            );
        }
        _ => {}
    }
}

fn is_option(ty: &Type) -> bool {
    matches!(ty, Type::Path(path) if path.qself.is_none() && path.path.segments.last().is_some_and(|s| s.ident == "Option"))
}

fn has_lifetime(tokens: TokenStream) -> bool {
    tokens.into_iter().any(|token| match token {
        TokenTree::Punct(punct) => punct.as_char() == '\'',
        TokenTree::Group(group) => has_lifetime(group.stream()),
        _ => false,
    })
}

fn param(cx: &Ctxt, ident: Ident, ty: &Type, options: &ParamOptions, version: u32, has_migrate: bool) -> Param {
    let name = ident.unraw().to_string();
    let since = options.since.as_ref().map_or(1, |lit| since(cx, lit, version));
    if since > 1 && options.default.is_none() && !has_migrate {
        let lit = options.since.as_ref().map_or_else(|| ident.span(), LitInt::span);
        cx.error(
            lit,
            format!(
                "parameter `{name}` was added in version {since}, so payloads from version {} lack it: give it `#[job(default = …)]` or a job-level `migrate = …`",
                since - 1
            ),
        );
    }
    Param {
        ident,
        name,
        ty: ty.clone(),
        ty_string: type_string(ty),
        since,
        explicit_since: options.since.is_some(),
        aliases: options.alias.iter().map(LitStr::value).collect(),
        default: options.default.as_ref().map(|default| match default {
            DefaultValue::Bare(keyword) => ParamDefault::Trait(keyword.clone()),
            DefaultValue::Expr(expr) => ParamDefault::Expr(expr.clone()),
        }),
    }
}

fn since(cx: &Ctxt, lit: &LitInt, version: u32) -> u32 {
    match int(cx, lit, "since") {
        Some(0) => {
            cx.error(
                lit.span(),
                "`since = 0` is not allowed: versions start at 1; write the version that added the parameter",
            );
            1
        }
        Some(since) if since > version => {
            cx.error(
                lit.span(),
                format!("`since = {since}` is above the job's `version = {version}`; raise `version` or lower `since`"),
            );
            1
        }
        Some(since) => since,
        None => 1,
    }
}

/// A parameter alias must not be a name another parameter uses.
fn check_param_aliases(cx: &Ctxt, inputs: &[JobInput], aliases: &[(String, &LitStr)]) {
    let names: HashSet<&str> = inputs
        .iter()
        .filter_map(|input| match input {
            JobInput::Arg(param) => Some(param.name.as_str()),
            JobInput::Context => None,
        })
        .collect();
    let mut seen = HashSet::new();
    for (owner, lit) in aliases {
        let alias = lit.value();
        if alias.trim().is_empty() {
            cx.error(lit.span(), "an alias cannot be empty: write the parameter's old name, e.g. `alias = \"lang\"`");
        } else if *owner == alias {
            cx.error(lit.span(), format!("alias `{alias}` is the parameter's own name: remove it"));
        } else if names.contains(alias.as_str()) {
            cx.error(
                lit.span(),
                format!(
                    "alias `{alias}` is the name of another parameter: payload keys would clash; pick another alias"
                ),
            );
        } else if !seen.insert(alias.clone()) {
            cx.error(lit.span(), format!("alias `{alias}` is already used by another parameter: pick another alias"));
        }
    }
}

/// The type as written, with the spaces `to_string` adds removed: `Vec<u64>`,
/// `HashMap<String, u64>`, `[u8; 4]`, `&'a str`.
pub(crate) fn type_string(ty: &Type) -> String {
    let mut out = String::new();
    write_tokens(ty.to_token_stream(), &mut out);
    out
}

fn write_tokens(tokens: TokenStream, out: &mut String) {
    // What came last decides whether a word needs a space before it.
    let mut space_before_word = false;
    for token in tokens {
        match token {
            TokenTree::Ident(ident) => {
                push_word(out, &ident.to_string(), space_before_word);
                space_before_word = true;
            }
            TokenTree::Literal(literal) => {
                push_word(out, &literal.to_string(), space_before_word);
                space_before_word = true;
            }
            TokenTree::Punct(punct) => {
                let c = punct.as_char();
                match c {
                    ',' | ';' => {
                        out.push(c);
                        out.push(' ');
                    }
                    '+' | '=' => {
                        out.push(' ');
                        out.push(c);
                        out.push(' ');
                    }
                    '>' if out.ends_with('-') => {
                        out.pop();
                        out.push_str(" -> ");
                    }
                    _ => out.push(c),
                }
                space_before_word = c == '>';
            }
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::None => ("", ""),
                };
                out.push_str(open);
                write_tokens(group.stream(), out);
                out.push_str(close);
                space_before_word = true;
            }
        }
    }
}

fn push_word(out: &mut String, word: &str, space: bool) {
    if space && !out.ends_with(' ') && !out.is_empty() {
        out.push(' ');
    }
    out.push_str(word);
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;
    use crate::parse;

    fn build_from(args: TokenStream, item: TokenStream) -> (Option<Job>, Vec<String>) {
        let cx = Ctxt::new();
        let job = parse::parse(&cx, args, item).map(|input| build(&cx, &input));
        let messages = match cx.check() {
            Ok(()) => Vec::new(),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect(),
        };
        (job, messages)
    }

    fn ty(tokens: TokenStream) -> String {
        type_string(&syn::parse2(tokens).expect("a type"))
    }

    #[test]
    fn pascal_case_joins_words() {
        assert_eq!(pascal_case("send_confirmation_sms"), "SendConfirmationSms");
        assert_eq!(pascal_case("import"), "Import");
        assert_eq!(pascal_case("_private_job"), "PrivateJob");
        assert_eq!(pascal_case("sync_v2"), "SyncV2");
        assert_eq!(pascal_case("already_Camel"), "AlreadyCamel");
        assert_eq!(pascal_case("__"), "");
    }

    #[test]
    fn raw_function_names_give_plain_struct_names() {
        let (job, messages) = build_from(
            quote!(),
            quote!(
                async fn r#type() {}
            ),
        );
        assert!(messages.is_empty(), "{messages:?}");
        let job = job.expect("a job");
        assert_eq!(job.struct_ident, "Type");
        assert_eq!(job.name, "type");
    }

    #[test]
    fn durations_parse_to_milliseconds() {
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("30s"), Ok(30_000));
        assert_eq!(parse_duration("5m"), Ok(300_000));
        assert_eq!(parse_duration("2h"), Ok(7_200_000));
        assert_eq!(parse_duration("1d"), Ok(86_400_000));
        assert_eq!(parse_duration("1m30s"), Ok(90_000));
        assert_eq!(parse_duration("1h0m5s250ms"), Ok(3_605_250));
    }

    #[test]
    fn malformed_durations_say_what_is_wrong() {
        assert_eq!(parse_duration(""), Err("it is empty".to_owned()));
        assert_eq!(parse_duration("30"), Err("`30` has no unit".to_owned()));
        assert_eq!(parse_duration("30 s"), Err("it contains a space".to_owned()));
        assert_eq!(parse_duration("1.5s"), Err("unexpected `.5s`".to_owned()));
        assert_eq!(parse_duration("3w"), Err("unknown unit `w`".to_owned()));
        assert_eq!(parse_duration("30s1m"), Err("unit `m` is repeated or out of order".to_owned()));
        assert_eq!(parse_duration("1s1s"), Err("unit `s` is repeated or out of order".to_owned()));
        assert_eq!(parse_duration("0s"), Err("it is zero".to_owned()));
        assert_eq!(parse_duration("99999999999999999999d"), Err("the number is too large".to_owned()));
        assert_eq!(parse_duration("999999999999999d"), Err("it is too long".to_owned()));
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn type_strings_read_as_written() {
        assert_eq!(ty(quote!(u64)), "u64");
        assert_eq!(ty(quote!(Vec<u64>)), "Vec<u64>");
        assert_eq!(ty(quote!(HashMap<String, Vec<u64>>)), "HashMap<String, Vec<u64>>");
        assert_eq!(ty(quote!(Option<jobs_core::Timestamp>)), "Option<jobs_core::Timestamp>");
        assert_eq!(ty(quote!(::std::string::String)), "::std::string::String");
        assert_eq!(ty(quote!([u8; 4])), "[u8; 4]");
        assert_eq!(ty(quote!((u64, String))), "(u64, String)");
        assert_eq!(ty(quote!(&'a mut str)), "&'a mut str");
        assert_eq!(ty(quote!(Box<dyn Fn(u64) -> u64 + Send>)), "Box<dyn Fn(u64) -> u64 + Send>");
        assert_eq!(ty(quote!(<Vec<u8> as IntoIterator>::Item)), "<Vec<u8> as IntoIterator>::Item");
    }

    #[test]
    fn keep_result_reads_a_duration_or_false() {
        let keep = |args: TokenStream| {
            let (job, messages) = build_from(
                args,
                quote!(
                    async fn f() -> Result<u64, JobError> {
                        Ok(1)
                    }
                ),
            );
            assert!(messages.is_empty(), "{messages:?}");
            job.map(|job| job.keep_result)
        };
        assert_eq!(keep(quote!(keep_result = "1h")), Some(Some(Some(3_600_000))));
        assert_eq!(keep(quote!(keep_result = false)), Some(Some(None)));
        assert_eq!(keep(quote!()), Some(None));
    }

    #[test]
    fn builds_the_documented_example() {
        let (job, messages) = build_from(
            quote!(queue = "critical", version = 2, retries = 5, timeout = "30s"),
            quote! {
                /// Sends the code.
                pub async fn send_confirmation_sms(
                    user_id: u64,
                    #[job(since = 2, default = "pt-BR".to_string())] locale: String,
                    ctx: &jobs_core::JobContext,
                ) -> Result<(), JobError> { Ok(()) }
            },
        );
        assert!(messages.is_empty(), "{messages:?}");
        let job = job.expect("a job");
        assert_eq!(job.struct_ident, "SendConfirmationSms");
        assert_eq!(job.name, "send_confirmation_sms");
        assert_eq!(job.queue, "critical");
        assert_eq!((job.version, job.retries, job.timeout_ms, job.unique_for_ms), (2, Some(5), Some(30_000), None));
        assert_eq!(job.docs.len(), 1);
        assert_eq!(job.inputs.len(), 3);
        assert!(matches!(job.inputs[2], JobInput::Context));
        let params: Vec<_> =
            job.params().map(|p| (p.name.as_str(), p.since, p.explicit_since, p.default.is_some())).collect();
        assert_eq!(params, [("user_id", 1, false, false), ("locale", 2, true, true)]);
    }

    #[test]
    fn defaults_apply_when_not_given() {
        let (job, messages) = build_from(
            quote!(),
            quote!(
                async fn ping() {}
            ),
        );
        assert!(messages.is_empty(), "{messages:?}");
        let job = job.expect("a job");
        assert_eq!((job.name.as_str(), job.queue.as_str(), job.version), ("ping", "default", 1));
        assert!(matches!(job.output, Output::Unit));
    }

    #[test]
    fn every_mistake_of_one_item_is_reported() {
        let (_, messages) = build_from(
            quote!(version = 2, queue = "", timeout = "soon"),
            quote! {
                fn f<T>(&self, (a, b): (u64, u64), #[job(since = 3)] c: u64, #[job(since = 2)] d: u64, e: &str, c1: &JobContext, c2: &JobContext) {}
            },
        );
        let expected = [
            "#[job] goes on an `async fn`",
            "a #[job] function cannot have generic parameters",
            "`queue` cannot be empty",
            "invalid `timeout` duration \"soon\"",
            "a #[job] function cannot take `self`",
            "a job parameter needs a plain name",
            "`since = 3` is above the job's `version = 2`; raise `version` or lower `since`",
            "parameter `d` was added in version 2, so payloads from version 1 lack it",
            "a job argument is stored as JSON and decoded later, so it must be owned: write `String`",
            "a job takes at most one `&JobContext`",
        ];
        assert_eq!(messages.len(), expected.len(), "{messages:#?}");
        for (message, start) in messages.iter().zip(expected) {
            assert!(message.starts_with(start), "{message:?} should start with {start:?}");
        }
    }

    #[test]
    fn since_above_one_is_fine_with_a_migrate_function() {
        let (_, messages) = build_from(
            quote!(version = 2, migrate = up),
            quote!(
                async fn f(#[job(since = 2)] d: u64) {}
            ),
        );
        assert!(messages.is_empty(), "{messages:?}");
    }

    #[test]
    fn version_and_since_zero_are_rejected() {
        let (_, messages) = build_from(
            quote!(version = 0),
            quote!(
                async fn f(#[job(since = 0)] d: u64) {}
            ),
        );
        assert_eq!(messages.len(), 2, "{messages:#?}");
        assert!(messages[0].starts_with("`version = 0` is not allowed"));
        assert!(messages[1].starts_with("`since = 0` is not allowed"));
    }

    #[test]
    fn aliases_must_not_clash() {
        let (_, messages) = build_from(
            quote!(aliases = ["f", "old", "old"]),
            quote!(
                async fn f(
                    #[job(alias = "b")] a: u64,
                    b: u64,
                    #[job(alias = "c")] c: u64,
                    #[job(alias = "x")] d: u64,
                    #[job(alias = "x")] e: u64,
                ) {
                }
            ),
        );
        let expected = [
            "alias `f` is the job's own name",
            "alias `old` is listed twice",
            "alias `b` is the name of another parameter",
            "alias `c` is the parameter's own name",
            "alias `x` is already used by another parameter",
        ];
        assert_eq!(messages.len(), expected.len(), "{messages:#?}");
        for (message, start) in messages.iter().zip(expected) {
            assert!(message.starts_with(start), "{message:?} should start with {start:?}");
        }
    }

    #[test]
    fn context_is_recognised_by_its_last_segment() {
        let (job, messages) = build_from(
            quote!(),
            quote!(
                async fn f(a: u64, c: &::jobs_core::JobContext) {}
            ),
        );
        assert!(messages.is_empty(), "{messages:?}");
        assert_eq!(job.expect("a job").params().count(), 1);
        let (_, messages) = build_from(
            quote!(),
            quote!(
                async fn f(c: JobContext) {}
            ),
        );
        assert_eq!(messages, ["the context is injected by reference: write `ctx: &JobContext`"]);
        let (_, messages) = build_from(
            quote!(),
            quote!(
                async fn f(_: &JobContext) {}
            ),
        );
        assert!(messages.is_empty(), "{messages:?}");
    }

    #[test]
    fn struct_names_must_be_identifiers() {
        for item in [
            quote!(
                async fn __() {}
            ),
            quote!(
                async fn self_() {}
            ),
            quote!(
                async fn _1() {}
            ),
        ] {
            let (_, messages) = build_from(quote!(), item);
            assert_eq!(messages.len(), 1, "{messages:?}");
            assert!(messages[0].starts_with("cannot name the job's struct after"), "{messages:?}");
        }
    }
}
