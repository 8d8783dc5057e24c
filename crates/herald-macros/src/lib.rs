//! Derive macros for [herald](https://docs.rs/herald).
//!
//! This crate provides `#[derive(Event)]`, which implements `herald::Event`
//! for a struct or an enum. Use it through `herald`, which re-exports it
//! under the same name as the trait (with its default `derive` feature), the
//! way `serde` re-exports `Serialize`:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, herald::Event)]
//! #[event(name = "order.created")]
//! struct OrderCreated {
//!     order_id: u64,
//! }
//!
//! assert_eq!(<OrderCreated as herald::Event>::NAME, "order.created");
//! ```
//!
//! The event name is checked while compiling, so a typo such as
//! `order..created` is a compile error rather than a failure at run time.
//! See [`Event`](macro@Event) for the attribute and the name rules.

mod name;

use proc_macro::TokenStream;
use quote::quote;
use syn::{Attribute, DeriveInput, Expr, ExprLit, Lit, LitStr, Meta, Token, parse_macro_input};

/// Derives `herald::Event` for a struct or an enum.
///
/// The generated impl sets `Event::NAME` to the name given in the required
/// `#[event(name = "...")]` attribute:
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize, herald::Event)]
/// #[event(name = "order.created")]
/// struct OrderCreated {
///     order_id: u64,
/// }
///
/// #[derive(Debug, Serialize, Deserialize, herald::Event)]
/// #[event(name = "payment.settled")]
/// enum PaymentSettled {
///     Card { last4: String },
///     Transfer { reference: String },
/// }
///
/// assert_eq!(<OrderCreated as herald::Event>::NAME, "order.created");
/// assert_eq!(<PaymentSettled as herald::Event>::NAME, "payment.settled");
/// ```
///
/// The type must still implement the supertraits of `Event`
/// (`Serialize`, `DeserializeOwned`, `Send`, `Sync` and `'static`); deriving
/// `Serialize` and `Deserialize` next to `Event` is the usual way.
///
/// # Attribute
///
/// `#[event(name = "...")]` takes exactly one key, `name`, whose value is a
/// string literal. It may be written once per type.
///
/// # Name rules
///
/// The name is checked while compiling, with the rules `herald` applies at
/// run time:
///
/// - it is 1 to 255 bytes long;
/// - it is made of segments separated by `.`, and no segment is empty;
/// - a segment holds only ASCII letters, ASCII digits, `_` and `-`, so
///   wildcards such as `*` and `#`, spaces and other characters are
///   rejected.
///
/// `order.created`, `billing.invoice_paid` and `user-account.v2` are valid;
/// `order..created`, `order.*` and `order created` are not.
///
/// # Generics
///
/// A generic type gets an impl with the same generic parameters and the same
/// bounds and `where` clause as the type itself; no bounds are added. State
/// on the type whatever its parameters need for it to be an `Event`. When
/// that bound includes `DeserializeOwned`, replace serde's own bounds with
/// `#[serde(bound = "...")]`, as serde's `T: Deserialize<'de>` next to
/// `T: DeserializeOwned` is ambiguous to the compiler:
///
/// ```
/// use serde::{de::DeserializeOwned, Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize, herald::Event)]
/// #[serde(bound = "T: Serialize + DeserializeOwned")]
/// #[event(name = "batch.received")]
/// struct BatchReceived<T>
/// where
///     T: Serialize + DeserializeOwned + Send + Sync + 'static,
/// {
///     items: Vec<T>,
/// }
///
/// assert_eq!(<BatchReceived<u32> as herald::Event>::NAME, "batch.received");
/// ```
///
/// # Errors
///
/// These are compile errors, each pointing at the offending tokens:
///
/// - the `#[event(...)]` attribute, or its `name`, is missing;
/// - a key other than `name` is given, as in `#[event(nmae = "...")]`;
/// - the value of `name` is not a string literal;
/// - `name` is given more than once;
/// - the name breaks one of the [name rules](#name-rules), for example
///   `invalid event name "order..created": segment 2 is empty`.
///
/// # Paths
///
/// The generated code names the trait as `::herald::Event`, so the `herald`
/// crate must be a dependency under that name.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Builds the `impl ::herald::Event` for `input`.
fn expand(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let name = event_name(input)?;
    if let Err(message) = name::validate(&name.value()) {
        return Err(syn::Error::new(name.span(), message));
    }

    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    // Re-emit the name as a plain literal, so raw strings and escapes in the
    // attribute come out as the same `&'static str`.
    let name = LitStr::new(&name.value(), name.span());

    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics ::herald::Event for #ident #ty_generics #where_clause {
            const NAME: &'static str = #name;
        }
    })
}

/// Reads the event name from the `#[event(...)]` attributes of `input`.
///
/// Errors from several attributes are combined, so each one is reported.
fn event_name(input: &DeriveInput) -> syn::Result<LitStr> {
    let mut name: Option<LitStr> = None;
    let mut errors: Option<syn::Error> = None;
    let mut last_attr: Option<&Attribute> = None;

    for attr in input.attrs.iter().filter(|a| a.path().is_ident("event")) {
        last_attr = Some(attr);
        if let Err(err) = parse_event_attr(attr, &mut name) {
            match &mut errors {
                Some(errors) => errors.combine(err),
                None => errors = Some(err),
            }
        }
    }

    if let Some(errors) = errors {
        return Err(errors);
    }
    match (name, last_attr) {
        (Some(name), _) => Ok(name),
        (None, Some(attr)) => Err(syn::Error::new_spanned(
            attr,
            "missing `name` in #[event(...)]: write the event type name, \
             as in #[event(name = \"order.created\")]",
        )),
        (None, None) => Err(syn::Error::new(
            input.ident.span(),
            "missing #[event(name = \"...\")] attribute: #[derive(Event)] needs \
             the event type name, as in #[event(name = \"order.created\")]",
        )),
    }
}

/// Parses one `#[event(...)]` attribute, storing its `name` in `name`.
fn parse_event_attr(attr: &Attribute, name: &mut Option<LitStr>) -> syn::Result<()> {
    if !matches!(attr.meta, Meta::List(_)) {
        return Err(syn::Error::new_spanned(
            attr,
            "expected #[event(name = \"...\")], as in #[event(name = \"order.created\")]",
        ));
    }
    attr.parse_nested_meta(|meta| {
        if !meta.path.is_ident("name") {
            let key = meta
                .path
                .segments
                .iter()
                .map(|segment| segment.ident.to_string())
                .collect::<Vec<_>>()
                .join("::");
            return Err(meta.error(format_args!(
                "unknown key `{key}` in #[event(...)]: the only key is `name`, \
                 as in #[event(name = \"order.created\")]"
            )));
        }
        if !meta.input.peek(Token![=]) {
            return Err(
                meta.error("expected a value for `name`, as in #[event(name = \"order.created\")]")
            );
        }
        let value: Expr = meta.value()?.parse()?;
        let lit = match value {
            Expr::Lit(ExprLit {
                lit: Lit::Str(lit), ..
            }) => lit,
            other => {
                return Err(syn::Error::new_spanned(
                    other,
                    "expected a string literal for `name`, \
                     as in #[event(name = \"order.created\")]",
                ));
            }
        };
        if name.is_some() {
            return Err(
                meta.error("duplicate `name` in #[event(...)]: an event type has exactly one name")
            );
        }
        *name = Some(lit);
        Ok(())
    })
}
