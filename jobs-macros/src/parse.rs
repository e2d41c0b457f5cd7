//! Syntax → raw options: reads the `#[job(...)]` arguments and the
//! `#[job(...)]` attributes on parameters into typed option structs, and
//! strips the latter from the function. Values are checked for their syntax
//! only; `model` checks what they mean.

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{Attribute, Expr, FnArg, Ident, Item, ItemFn, Lit, LitInt, LitStr, Meta, Path, Token};

use crate::ctxt::Ctxt;

/// The options accepted in `#[job(...)]` on the function, as listed in errors.
const JOB_OPTION_NAMES: &[&str] =
    &["name", "aliases", "queue", "version", "retries", "timeout", "unique_for", "keep_result", "migrate"];

/// `did you mean `queue`? ` when `key` is a near miss of one of `options` (a
/// typo, another case, a letter too many or too few, or the same first four
/// letters: `retry`, `unique`); empty otherwise.
fn did_you_mean(key: &str, options: &[&str]) -> String {
    let key = key.to_lowercase();
    // Ranked by the first four letters shared, then by edits: `time` means `timeout`, not `name`.
    let near = |option: &str| {
        let shared = key.chars().zip(option.chars()).take_while(|(a, b)| a == b).count();
        let edits = distance(&key, option);
        (edits <= 2 || shared >= 4).then_some((shared < 4, edits))
    };
    let close = options.iter().filter_map(|option| near(option).map(|rank| (rank, *option))).min();
    close.map_or_else(String::new, |(_, option)| format!("did you mean `{option}`? "))
}

/// Levenshtein distance: the edits (insert, delete, replace) from `a` to `b`.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The options accepted in `#[job(...)]` on a parameter, as listed in errors.
const PARAM_OPTIONS: &str = "`default`, `default = …`, `since`, `alias`";

/// A `#[job]` function with its options, parameter attributes stripped.
pub(crate) struct Input {
    /// The function as written, minus the `#[job(...)]` parameter attributes.
    pub(crate) func: ItemFn,
    /// The options in `#[job(...)]`.
    pub(crate) options: JobOptions,
    /// The options of each entry of `func.sig.inputs`, in order.
    pub(crate) params: Vec<ParamOptions>,
}

/// The raw job-level options.
#[derive(Default)]
pub(crate) struct JobOptions {
    pub(crate) name: Option<LitStr>,
    pub(crate) aliases: Option<Vec<LitStr>>,
    pub(crate) queue: Option<LitStr>,
    pub(crate) version: Option<LitInt>,
    pub(crate) retries: Option<LitInt>,
    pub(crate) timeout: Option<LitStr>,
    pub(crate) unique_for: Option<LitStr>,
    pub(crate) keep_result: Option<Lit>,
    pub(crate) migrate: Option<Path>,
    /// `version` was given, but not as a number (its checks against `since` are moot).
    pub(crate) version_unreadable: bool,
}

/// The raw options of one parameter.
#[derive(Default)]
pub(crate) struct ParamOptions {
    pub(crate) default: Option<DefaultValue>,
    pub(crate) since: Option<LitInt>,
    pub(crate) alias: Option<LitStr>,
}

/// A parameter's `default`.
pub(crate) enum DefaultValue {
    /// `default`: the type's `Default::default()`; the ident is the keyword, for spans.
    Bare(Ident),
    /// `default = EXPR`.
    Expr(Expr),
}

/// An option that may be given once; a repeat is reported at its second occurrence.
struct Attr<T> {
    name: &'static str,
    value: Option<T>,
}

impl<T> Attr<T> {
    fn none(name: &'static str) -> Self {
        Self { name, value: None }
    }

    fn set(&mut self, cx: &Ctxt, key: &Ident, value: T) {
        if self.value.is_some() {
            cx.error(
                key.span(),
                format!("duplicate option `{}`: it is already given earlier; remove this one", self.name),
            );
        } else {
            self.value = Some(value);
        }
    }

    fn get(self) -> Option<T> {
        self.value
    }
}

/// Reads the attribute arguments and the item. Returns `None` (with an error
/// recorded) when the item is not a function.
pub(crate) fn parse(cx: &Ctxt, args: TokenStream, item: TokenStream) -> Option<Input> {
    let mut func = match syn::parse2::<Item>(item) {
        Ok(Item::Fn(func)) => func,
        Ok(other) => {
            cx.error(
                item_span(&other),
                "#[job] goes on an `async fn`, e.g. `#[job] async fn send_email(user_id: u64)`",
            );
            return None;
        }
        Err(error) => {
            cx.push(syn::Error::new(
                error.span(),
                format!("#[job] goes on an `async fn`, e.g. `#[job] async fn send_email(user_id: u64)`; here: {error}"),
            ));
            return None;
        }
    };
    let options = parse_job_options(cx, args);
    let params = func.sig.inputs.iter_mut().map(|arg| take_param_options(cx, arg)).collect();
    Some(Input { func, options, params })
}

/// The span of the keyword that says what kind of item this is.
fn item_span(item: &Item) -> Span {
    match item {
        Item::Const(item) => item.const_token.span,
        Item::Enum(item) => item.enum_token.span,
        Item::Impl(item) => item.impl_token.span,
        Item::Mod(item) => item.mod_token.span,
        Item::Static(item) => item.static_token.span,
        Item::Struct(item) => item.struct_token.span,
        Item::Trait(item) => item.trait_token.span,
        Item::Type(item) => item.type_token.span,
        Item::Use(item) => item.use_token.span,
        _ => Span::call_site(),
    }
}

fn parse_job_options(cx: &Ctxt, args: TokenStream) -> JobOptions {
    let mut name = Attr::none("name");
    let mut aliases = Attr::none("aliases");
    let mut queue = Attr::none("queue");
    let mut version = Attr::none("version");
    let mut retries = Attr::none("retries");
    let mut timeout = Attr::none("timeout");
    let mut unique_for = Attr::none("unique_for");
    let mut keep_result = Attr::none("keep_result");
    let mut migrate = Attr::none("migrate");
    let mut version_unreadable = false;

    let parser = |input: ParseStream| -> syn::Result<()> {
        while !input.is_empty() {
            let key = option_name(input)?;
            match key.to_string().as_str() {
                "name" => {
                    if let Some(v) = value::<LitStr>(cx, input, &key, "a string, e.g. `name = \"send_sms\"`")? {
                        name.set(cx, &key, v);
                    }
                }
                "aliases" => {
                    if let Some(v) =
                        value::<Aliases>(cx, input, &key, "a list of strings, e.g. `aliases = [\"old_name\"]`")?
                    {
                        aliases.set(cx, &key, v.0);
                    }
                }
                "queue" => {
                    if let Some(v) = value::<LitStr>(cx, input, &key, "a string, e.g. `queue = \"critical\"`")? {
                        queue.set(cx, &key, v);
                    }
                }
                "version" => match value::<LitInt>(cx, input, &key, "an integer, e.g. `version = 2`")? {
                    Some(v) => version.set(cx, &key, v),
                    None => version_unreadable = true,
                },
                "retries" => {
                    if let Some(v) = value::<LitInt>(cx, input, &key, "an integer, e.g. `retries = 5`")? {
                        retries.set(cx, &key, v);
                    }
                }
                "timeout" => {
                    if let Some(v) = value::<LitStr>(cx, input, &key, "a duration string, e.g. `timeout = \"30s\"`")? {
                        timeout.set(cx, &key, v);
                    }
                }
                "unique_for" => {
                    if let Some(v) = value::<LitStr>(cx, input, &key, "a duration string, e.g. `unique_for = \"1h\"`")?
                    {
                        unique_for.set(cx, &key, v);
                    }
                }
                "keep_result" => {
                    let expected = "a duration string, e.g. `keep_result = \"1h\"`, or `false`";
                    if let Some(v) = value::<Lit>(cx, input, &key, expected)? {
                        keep_result.set(cx, &key, v);
                    }
                }
                "migrate" => {
                    let expected = "a path to a function, e.g. `migrate = migrations::upgrade_sms`";
                    if let Some(v) = value::<Path>(cx, input, &key, expected)? {
                        migrate.set(cx, &key, v);
                    }
                }
                "default" | "since" => {
                    cx.error(
                        key.span(),
                        format!("`{key}` is a parameter option: write it on the parameter, e.g. `#[job({key} = …)] locale: String`"),
                    );
                    skip_value(input)?;
                }
                "alias" => {
                    cx.error(
                        key.span(),
                        "`alias` is a parameter option: write it on the parameter; for the job's old names write `aliases = [\"old_name\"]`",
                    );
                    skip_value(input)?;
                }
                _ => {
                    let hint = did_you_mean(&key.to_string(), JOB_OPTION_NAMES);
                    let expected: Vec<String> = JOB_OPTION_NAMES.iter().map(|name| format!("`{name}`")).collect();
                    let expected = expected.join(", ");
                    cx.error(key.span(), format!("unknown job option `{key}`: {hint}expected one of {expected}"));
                    skip_value(input)?;
                }
            }
            next_option(cx, input)?;
        }
        Ok(())
    };
    if let Err(error) = parser.parse2(args) {
        cx.push(error);
    }

    JobOptions {
        name: name.get(),
        aliases: aliases.get(),
        queue: queue.get(),
        version: version.get(),
        retries: retries.get(),
        timeout: timeout.get(),
        unique_for: unique_for.get(),
        keep_result: keep_result.get(),
        migrate: migrate.get(),
        version_unreadable,
    }
}

/// Removes the `#[job(...)]` attributes of one parameter and reads them.
fn take_param_options(cx: &Ctxt, arg: &mut FnArg) -> ParamOptions {
    let attrs = match arg {
        FnArg::Typed(arg) => &mut arg.attrs,
        FnArg::Receiver(receiver) => &mut receiver.attrs,
    };
    // `#[job(...)]`, or `#[jobs_core::job(...)]` as the function's own may be written.
    let (ours, others): (Vec<Attribute>, Vec<Attribute>) =
        attrs.drain(..).partition(|attr| attr.path().segments.last().is_some_and(|last| last.ident == "job"));
    *attrs = others;

    let mut default = Attr::none("default");
    let mut since = Attr::none("since");
    let mut alias = Attr::none("alias");
    for attr in &ours {
        if let Meta::Path(path) = &attr.meta {
            cx.error_spanned(
                path,
                format!(
                    "`#[job]` on a parameter needs options, e.g. `#[job(default = …)]`; expected one of {PARAM_OPTIONS}"
                ),
            );
            continue;
        }
        let parser = |input: ParseStream| -> syn::Result<()> {
            while !input.is_empty() {
                let key = option_name(input)?;
                match key.to_string().as_str() {
                    "default" => {
                        if input.is_empty() || input.peek(Token![,]) {
                            default.set(cx, &key, DefaultValue::Bare(key.clone()));
                        } else if let Some(v) = value::<Expr>(cx, input, &key, "an expression, e.g. `default = 10`")? {
                            default.set(cx, &key, DefaultValue::Expr(v));
                        }
                    }
                    "since" => {
                        if let Some(v) = value::<LitInt>(cx, input, &key, "an integer, e.g. `since = 2`")? {
                            since.set(cx, &key, v);
                        }
                    }
                    "alias" => {
                        if let Some(v) = value::<LitStr>(cx, input, &key, "a string, e.g. `alias = \"old_name\"`")? {
                            alias.set(cx, &key, v);
                        }
                    }
                    "name" | "aliases" | "queue" | "version" | "retries" | "timeout" | "unique_for" | "keep_result"
                    | "migrate" => {
                        cx.error(
                            key.span(),
                            format!("`{key}` is a job option: write it in the `#[job(...)]` on the function; a parameter takes {PARAM_OPTIONS}"),
                        );
                        skip_value(input)?;
                    }
                    _ => {
                        cx.error(
                            key.span(),
                            format!(
                                "unknown parameter option `{key}`: {}expected one of {PARAM_OPTIONS}",
                                did_you_mean(&key.to_string(), &["default", "since", "alias"])
                            ),
                        );
                        skip_value(input)?;
                    }
                }
                next_option(cx, input)?;
            }
            Ok(())
        };
        if let Err(error) = attr.parse_args_with(parser) {
            cx.push(error);
        }
    }
    ParamOptions { default: default.get(), since: since.get(), alias: alias.get() }
}

/// The name of the next option (keywords allowed, so `type` gets a proper error).
fn option_name(input: ParseStream) -> syn::Result<Ident> {
    input
        .call(Ident::parse_any)
        .map_err(|error| syn::Error::new(error.span(), "expected an option such as `queue = \"critical\"`"))
}

/// Reads `= VALUE`. A missing or malformed value is recorded and skipped, so
/// that the options after it are still checked.
fn value<T: Parse>(cx: &Ctxt, input: ParseStream, key: &Ident, expected: &str) -> syn::Result<Option<T>> {
    if input.parse::<Option<Token![=]>>()?.is_none() {
        cx.error(key.span(), format!("`{key}` needs a value: {expected}"));
        skip_value(input)?;
        return Ok(None);
    }
    let start = input.span();
    match input.parse::<T>() {
        Ok(value) if input.is_empty() || input.peek(Token![,]) => Ok(Some(value)),
        Ok(value) if input.peek(Ident::peek_any) && input.peek2(Token![=]) => {
            // `queue = "critical" retries = 3`: the value is fine, the comma is missing.
            let next = input.fork().call(Ident::parse_any)?;
            cx.error(next.span(), format!("expected `,` before `{next}`: separate the options with commas"));
            Ok(Some(value))
        }
        _ => {
            cx.error(start, format!("`{key}` takes {expected}"));
            skip_value(input)?;
            Ok(None)
        }
    }
}

/// Skips to the comma that ends the current option.
fn skip_value(input: ParseStream) -> syn::Result<()> {
    while !input.is_empty() && !input.peek(Token![,]) {
        input.parse::<TokenTree>()?;
    }
    Ok(())
}

/// Consumes the comma between options (a missing one before the next
/// option was reported by `value`), and reports any extra one.
fn next_option(cx: &Ctxt, input: ParseStream) -> syn::Result<()> {
    if input.is_empty() || (input.peek(Ident::peek_any) && input.peek2(Token![=])) {
        return Ok(());
    }
    input.parse::<Token![,]>()?;
    while input.peek(Token![,]) {
        let extra = input.parse::<Token![,]>()?;
        cx.error(extra.span, "remove this extra `,`");
    }
    Ok(())
}

/// `["a", "b"]`.
struct Aliases(Vec<LitStr>);

impl Parse for Aliases {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let content;
        syn::bracketed!(content in input);
        let list = Punctuated::<LitStr, Token![,]>::parse_terminated(&content)?;
        Ok(Self(list.into_iter().collect()))
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;

    fn messages(cx: Ctxt) -> Vec<String> {
        match cx.check() {
            Ok(()) => Vec::new(),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    fn parse_ok(args: TokenStream, item: TokenStream) -> Input {
        let cx = Ctxt::new();
        let input = parse(&cx, args, item);
        assert_eq!(messages(cx), Vec::<String>::new());
        input.expect("a function")
    }

    #[test]
    fn reads_every_job_option() {
        let input = parse_ok(
            quote!(
                name = "n",
                aliases = ["a", "b"],
                queue = "q",
                version = 3,
                retries = 5,
                timeout = "30s",
                unique_for = "1h",
                migrate = m::up
            ),
            quote!(
                async fn f() {}
            ),
        );
        let options = input.options;
        assert_eq!(options.name.map(|v| v.value()).as_deref(), Some("n"));
        assert_eq!(options.aliases.map(|v| v.len()), Some(2));
        assert_eq!(options.queue.map(|v| v.value()).as_deref(), Some("q"));
        assert_eq!(options.version.map(|v| v.to_string()).as_deref(), Some("3"));
        assert_eq!(options.retries.map(|v| v.to_string()).as_deref(), Some("5"));
        assert_eq!(options.timeout.map(|v| v.value()).as_deref(), Some("30s"));
        assert_eq!(options.unique_for.map(|v| v.value()).as_deref(), Some("1h"));
        assert!(options.migrate.is_some());
    }

    #[test]
    fn strips_param_attributes_and_reads_them() {
        let input = parse_ok(
            quote!(),
            quote!(
                async fn f(
                    #[job(default = 1 + 2, since = 2)] a: u64,
                    #[job(default, alias = "old")]
                    #[allow(unused)]
                    b: u64,
                ) {
                }
            ),
        );
        assert!(matches!(input.params[0].default, Some(DefaultValue::Expr(_))));
        assert!(input.params[0].since.is_some());
        assert!(matches!(input.params[1].default, Some(DefaultValue::Bare(_))));
        assert_eq!(input.params[1].alias.as_ref().map(LitStr::value).as_deref(), Some("old"));
        let FnArg::Typed(b) = &input.func.sig.inputs[1] else { panic!("typed") };
        assert_eq!(b.attrs.len(), 1, "other attributes stay");
        assert!(b.attrs[0].path().is_ident("allow"));
    }

    #[test]
    fn reports_every_bad_option_of_one_item() {
        let cx = Ctxt::new();
        parse(
            &cx,
            quote!(queue = "a", colour = "red", queue = "b", version = "2", since = 2),
            quote!(
                async fn f(#[job(fallback = 1, default, default)] a: u64) {}
            ),
        );
        let messages = messages(cx);
        assert_eq!(messages.len(), 6, "{messages:#?}");
        assert!(messages[0].starts_with("unknown job option `colour`: expected one of `name`"));
        assert!(messages[1].starts_with("duplicate option `queue`"));
        assert!(messages[2].starts_with("`version` takes an integer"));
        assert!(messages[3].starts_with("`since` is a parameter option"));
        assert!(messages[4].starts_with("unknown parameter option `fallback`: expected one of `default`"));
        assert!(messages[5].starts_with("duplicate option `default`"));
    }

    #[test]
    fn a_near_miss_names_the_option_meant() {
        assert_eq!(did_you_mean("queu", JOB_OPTION_NAMES), "did you mean `queue`? ");
        assert_eq!(did_you_mean("Queue", JOB_OPTION_NAMES), "did you mean `queue`? ");
        assert_eq!(did_you_mean("retires", JOB_OPTION_NAMES), "did you mean `retries`? ");
        assert_eq!(did_you_mean("defualt", &["default", "since", "alias"]), "did you mean `default`? ");
        assert_eq!(did_you_mean("retry", JOB_OPTION_NAMES), "did you mean `retries`? ");
        assert_eq!(did_you_mean("unique", JOB_OPTION_NAMES), "did you mean `unique_for`? ");
        assert_eq!(did_you_mean("time", JOB_OPTION_NAMES), "did you mean `timeout`? ");
        assert_eq!(did_you_mean("colour", JOB_OPTION_NAMES), "");
    }

    #[test]
    fn duplicates_across_param_attributes_are_reported() {
        let cx = Ctxt::new();
        parse(
            &cx,
            quote!(),
            quote!(
                async fn f(
                    #[job(since = 2)]
                    #[job(since = 3)]
                    a: u64,
                ) {
                }
            ),
        );
        let messages = messages(cx);
        assert_eq!(messages.len(), 1);
        assert!(messages[0].starts_with("duplicate option `since`"));
    }

    #[test]
    fn a_value_is_required() {
        let cx = Ctxt::new();
        parse(
            &cx,
            quote!(queue, version = 2),
            quote!(
                async fn f() {}
            ),
        );
        assert_eq!(messages(cx), ["`queue` needs a value: a string, e.g. `queue = \"critical\"`"]);
    }

    #[test]
    fn a_struct_is_not_a_job() {
        let cx = Ctxt::new();
        assert!(
            parse(
                &cx,
                quote!(),
                quote!(
                    struct S;
                )
            )
            .is_none()
        );
        assert_eq!(messages(cx).len(), 1);
    }
}
