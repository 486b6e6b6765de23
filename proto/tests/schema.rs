//! PROTOCOL.md against the crate, name for name. The document's `schema` blocks
//! list every struct's fields and every enum's variants, in wire order; this
//! test derives the same from the Rust types and fails when the two differ (a
//! field added to a struct but not to the document, a variant renumbered, ...).
//! The code and constants tables are checked the same way.
//!
//! The Rust side comes from serde, with no extra dependency: a recording
//! `Serializer` run over sample values gives every field's name and type in
//! order, and a `Deserializer` that only listens gives each enum's full variant
//! list, so a variant without a sample cannot slip by.

mod common;

use std::collections::BTreeMap;
use std::fmt;

use serde::{de, ser, Deserialize, Serialize};
use warren_proto::*;

// ---------------------------------------------------------------------------
// The model both sides are reduced to.

/// A field's type, as the document writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ty {
    Prim(String),
    List(Box<Ty>),
    Option(Box<Ty>),
    Named(String),
    /// Not known from the samples yet (a `None`, an empty list).
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Shape {
    Unit,
    Newtype(Ty),
    Struct(Vec<(String, Ty)>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Def {
    Struct(Vec<(String, Ty)>),
    /// Variant index → name and shape.
    Enum(BTreeMap<u32, (String, Shape)>),
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Ty::List(item) if **item == Ty::Prim("u8".into()) => write!(f, "bytes"),
            Ty::Prim(name) | Ty::Named(name) => write!(f, "{name}"),
            Ty::List(item) => write!(f, "[{item}]"),
            Ty::Option(inner) => write!(f, "Option<{inner}>"),
            Ty::Unknown => write!(f, "?"),
        }
    }
}

fn fields(f: &mut fmt::Formatter, fields: &[(String, Ty)]) -> fmt::Result {
    let list: Vec<String> = fields.iter().map(|(n, t)| format!("{n}: {t}")).collect();
    write!(f, "{{ {} }}", list.join(", "))
}

impl fmt::Display for Def {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Def::Struct(list) => fields(f, list),
            Def::Enum(variants) => {
                write!(f, "{{")?;
                for (i, (index, (name, shape))) in variants.iter().enumerate() {
                    write!(f, "{} {index} {name}", if i == 0 { "" } else { "," })?;
                    match shape {
                        Shape::Unit => {}
                        Shape::Newtype(ty) => write!(f, "({ty})")?,
                        Shape::Struct(list) => {
                            write!(f, " ")?;
                            fields(f, list)?;
                        }
                    }
                }
                write!(f, " }}")
            }
        }
    }
}

fn show(name: &str, def: &Def) -> String {
    let kind = match def {
        Def::Struct(_) => "struct",
        Def::Enum(_) => "enum",
    };
    format!("{kind} {name} {def}")
}

/// Combines what two samples taught about one type.
fn merge_ty(a: &Ty, b: &Ty, at: &str) -> Ty {
    match (a, b) {
        (Ty::Unknown, t) | (t, Ty::Unknown) => t.clone(),
        (Ty::List(x), Ty::List(y)) => Ty::List(Box::new(merge_ty(x, y, at))),
        (Ty::Option(x), Ty::Option(y)) => Ty::Option(Box::new(merge_ty(x, y, at))),
        (x, y) if x == y => x.clone(),
        (x, y) => panic!("{at}: samples disagree on the type ({x} vs {y})"),
    }
}

fn merge_fields(old: &mut [(String, Ty)], new: &[(String, Ty)], at: &str) {
    let names = |l: &[(String, Ty)]| l.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(old),
        names(new),
        "{at}: samples disagree on the fields"
    );
    for ((name, ty), (_, new)) in old.iter_mut().zip(new) {
        *ty = merge_ty(ty, new, &format!("{at}.{name}"));
    }
}

#[derive(Default)]
struct Defs(BTreeMap<String, Def>);

impl Defs {
    fn add_struct(&mut self, name: &str, list: Vec<(String, Ty)>) {
        match self.0.get_mut(name) {
            None => {
                self.0.insert(name.into(), Def::Struct(list));
            }
            Some(Def::Struct(old)) => merge_fields(old, &list, name),
            Some(Def::Enum(_)) => panic!("{name} is both a struct and an enum"),
        }
    }

    fn add_variant(&mut self, name: &str, index: u32, variant: &str, shape: Shape) {
        let def = self
            .0
            .entry(name.into())
            .or_insert_with(|| Def::Enum(BTreeMap::new()));
        let Def::Enum(variants) = def else {
            panic!("{name} is both a struct and an enum")
        };
        let at = format!("{name}::{variant}");
        match variants.get_mut(&index) {
            None => {
                variants.insert(index, (variant.into(), shape));
            }
            Some((old_name, old)) => {
                assert_eq!(old_name, variant, "{name}: variant {index} has two names");
                match (old, &shape) {
                    (Shape::Newtype(a), Shape::Newtype(b)) => *a = merge_ty(a, b, &at),
                    (Shape::Struct(a), Shape::Struct(b)) => merge_fields(a, b, &at),
                    (a, b) => assert_eq!(*a, *b, "{at}: samples disagree"),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The Rust side, part 1: a Serializer that records shapes instead of bytes.

#[derive(Debug)]
struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

fn unsupported<T>(what: &str) -> Result<T, Error> {
    Err(Error(format!(
        "{what}: PROTOCOL.md's notation (§2.1) has no way to write this; extend it and this test"
    )))
}

struct Recorder<'a>(&'a mut Defs);

/// Records the types of `value` (and of everything in it) into `defs`.
fn record<T: Serialize + ?Sized>(defs: &mut Defs, value: &T) -> Ty {
    value.serialize(Recorder(defs)).unwrap()
}

/// Serializer methods for primitives: each records its Rust type's name.
macro_rules! prims {
    ($($method:ident: $ty:ident),* $(,)?) => {
        $(fn $method(self, _: $ty) -> Result<Ty, Error> {
            Ok(Ty::Prim(stringify!($ty).into()))
        })*
    };
}

impl<'a> ser::Serializer for Recorder<'a> {
    type Ok = Ty;
    type Error = Error;
    type SerializeSeq = SeqRecorder<'a>;
    type SerializeTuple = ser::Impossible<Ty, Error>;
    type SerializeTupleStruct = ser::Impossible<Ty, Error>;
    type SerializeTupleVariant = ser::Impossible<Ty, Error>;
    type SerializeMap = ser::Impossible<Ty, Error>;
    type SerializeStruct = StructRecorder<'a>;
    type SerializeStructVariant = StructRecorder<'a>;

    prims! {
        serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
        serialize_i64: i64, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
        serialize_u64: u64, serialize_f32: f32, serialize_f64: f64, serialize_char: char,
    }
    fn serialize_str(self, _: &str) -> Result<Ty, Error> {
        Ok(Ty::Prim("str".into()))
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<Ty, Error> {
        Ok(Ty::List(Box::new(Ty::Prim("u8".into()))))
    }
    fn serialize_none(self) -> Result<Ty, Error> {
        Ok(Ty::Option(Box::new(Ty::Unknown)))
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Ty, Error> {
        Ok(Ty::Option(Box::new(value.serialize(self)?)))
    }
    fn serialize_unit(self) -> Result<Ty, Error> {
        unsupported("unit")
    }
    fn serialize_unit_struct(self, name: &'static str) -> Result<Ty, Error> {
        unsupported(name)
    }
    fn serialize_unit_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<Ty, Error> {
        self.0.add_variant(name, index, variant, Shape::Unit);
        Ok(Ty::Named(name.into()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        _: &T,
    ) -> Result<Ty, Error> {
        unsupported(name)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Ty, Error> {
        let inner = value.serialize(Recorder(&mut *self.0))?;
        self.0
            .add_variant(name, index, variant, Shape::Newtype(inner));
        Ok(Ty::Named(name.into()))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<SeqRecorder<'a>, Error> {
        Ok(SeqRecorder {
            defs: self.0,
            item: Ty::Unknown,
        })
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
        unsupported("tuple")
    }
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        unsupported(name)
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        unsupported(&format!("{name}::{variant} (a tuple variant)"))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
        unsupported("map")
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<StructRecorder<'a>, Error> {
        Ok(StructRecorder {
            defs: self.0,
            name,
            variant: None,
            fields: Vec::new(),
        })
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<StructRecorder<'a>, Error> {
        Ok(StructRecorder {
            defs: self.0,
            name,
            variant: Some((index, variant)),
            fields: Vec::new(),
        })
    }
}

struct SeqRecorder<'a> {
    defs: &'a mut Defs,
    item: Ty,
}

impl ser::SerializeSeq for SeqRecorder<'_> {
    type Ok = Ty;
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let ty = value.serialize(Recorder(&mut *self.defs))?;
        self.item = merge_ty(&self.item, &ty, "list item");
        Ok(())
    }
    fn end(self) -> Result<Ty, Error> {
        Ok(Ty::List(Box::new(self.item)))
    }
}

struct StructRecorder<'a> {
    defs: &'a mut Defs,
    name: &'static str,
    /// Set for a struct variant of the enum `name`.
    variant: Option<(u32, &'static str)>,
    fields: Vec<(String, Ty)>,
}

impl StructRecorder<'_> {
    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), Error> {
        let ty = value.serialize(Recorder(&mut *self.defs))?;
        self.fields.push((key.into(), ty));
        Ok(())
    }

    fn finish(self) -> Result<Ty, Error> {
        match self.variant {
            None => self.defs.add_struct(self.name, self.fields),
            Some((index, variant)) => {
                self.defs
                    .add_variant(self.name, index, variant, Shape::Struct(self.fields))
            }
        }
        Ok(Ty::Named(self.name.into()))
    }
}

impl ser::SerializeStruct for StructRecorder<'_> {
    type Ok = Ty;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.field(key, value)
    }
    fn skip_field(&mut self, key: &'static str) -> Result<(), Error> {
        // A skipped field would be missing from the wire in some messages only.
        unsupported(&format!("{}.{key} (a skipped field)", self.name))
    }
    fn end(self) -> Result<Ty, Error> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for StructRecorder<'_> {
    type Ok = Ty;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.field(key, value)
    }
    fn end(self) -> Result<Ty, Error> {
        self.finish()
    }
}

// ---------------------------------------------------------------------------
// The Rust side, part 2: a Deserializer that only listens. A derived
// `Deserialize` names all its fields or variants up front, whatever the input.

#[derive(Debug, PartialEq)]
enum Names {
    Struct(Vec<String>),
    Enum(Vec<String>),
}

struct Listener<'a>(&'a mut Option<(String, Names)>);

impl<'de> de::Deserializer<'de> for Listener<'_> {
    type Error = Error;

    fn deserialize_any<V: de::Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(Error("not a struct or an enum".into()))
    }

    fn deserialize_struct<V: de::Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Error> {
        let fields = fields.iter().map(|f| f.to_string()).collect();
        *self.0 = Some((name.into(), Names::Struct(fields)));
        Err(Error("listened".into()))
    }

    fn deserialize_enum<V: de::Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Error> {
        let variants = variants.iter().map(|v| v.to_string()).collect();
        *self.0 = Some((name.into(), Names::Enum(variants)));
        Err(Error("listened".into()))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map identifier ignored_any
    }
}

fn names_of<T: for<'de> Deserialize<'de>>() -> (String, Names) {
    let mut heard = None;
    let _ = T::deserialize(Listener(&mut heard));
    heard.expect("a derived Deserialize names its struct or enum")
}

/// Every serde type of the protocol. A type found in a sample but missing here
/// fails the test, so this list cannot fall behind.
fn all_names() -> BTreeMap<String, Names> {
    [
        names_of::<Control>(),
        names_of::<Hello>(),
        names_of::<Welcome>(),
        names_of::<Limits>(),
        names_of::<Refusal>(),
        names_of::<RefusalCode>(),
        names_of::<Open>(),
        names_of::<RequestHead>(),
        names_of::<Header>(),
        names_of::<Mode>(),
        names_of::<Reply>(),
        names_of::<ResponseHead>(),
        names_of::<StreamError>(),
        names_of::<BodyPart>(),
        names_of::<ErrorKind>(),
        names_of::<WsMessage>(),
        names_of::<Payload>(),
        names_of::<RoomEvent>(),
        names_of::<RoomCommand>(),
    ]
    .into_iter()
    .collect()
}

/// The golden examples of PROTOCOL.md §7, which must show every variant of the
/// message enums.
fn record_examples(defs: &mut Defs) {
    let examples = common::examples();
    for (_, value) in &examples.control {
        record(defs, value);
    }
    for (_, value) in &examples.open {
        record(defs, value);
    }
    for (_, value) in &examples.reply {
        record(defs, value);
    }
    for (_, value) in &examples.body {
        record(defs, value);
    }
    for (_, value) in &examples.ws {
        record(defs, value);
    }
    for (_, value) in &examples.room_event {
        record(defs, value);
    }
    for (_, value) in &examples.room_command {
        record(defs, value);
    }
}

/// The enums whose every variant has a golden example in §7.
const MESSAGE_ENUMS: [&str; 7] = [
    "Control",
    "Open",
    "Reply",
    "BodyPart",
    "WsMessage",
    "RoomEvent",
    "RoomCommand",
];

/// The rest: variants of the enums inside messages, which need no example of
/// their own.
fn record_more(defs: &mut Defs) {
    use ErrorKind::*;
    use RefusalCode::*;
    for code in [
        BadToken,
        UnknownClient,
        UnsupportedVersion,
        TooManyConnections,
        ShuttingDown,
        Internal,
    ] {
        record(defs, &code);
    }
    for kind in [UpstreamUnavailable, UpstreamTimeout, BadRequest, Overloaded] {
        record(defs, &kind);
    }
    record(defs, &Mode::Stream);
    record(defs, &Mode::Blocking);
}

/// Every type of the protocol as the Rust code defines it, checked for being
/// complete: all types listed, all variants sampled, every type known.
fn code_defs() -> BTreeMap<String, Def> {
    let mut failures = Vec::new();
    let mut examples = Defs::default();
    record_examples(&mut examples);
    let mut defs = Defs::default();
    record_examples(&mut defs);
    record_more(&mut defs);
    let names = all_names();

    for (name, def) in &defs.0 {
        match (names.get(name), def) {
            (None, _) => failures.push(format!(
                "{name} is in the messages but not in all_names() in tests/schema.rs: add it"
            )),
            (Some(Names::Struct(fields)), Def::Struct(seen)) => {
                let seen: Vec<_> = seen.iter().map(|(n, _)| n.clone()).collect();
                if *fields != seen {
                    failures.push(format!(
                        "{name}: serialized fields {seen:?}, declared {fields:?}"
                    ));
                }
            }
            (Some(Names::Enum(variants)), Def::Enum(seen)) => {
                for (index, variant) in variants.iter().enumerate() {
                    match seen.get(&(index as u32)) {
                        Some((n, _)) if n == variant => {}
                        _ => failures.push(format!(
                            "{name}::{variant} (index {index}) has no sample: add one to {}",
                            if MESSAGE_ENUMS.contains(&name.as_str()) {
                                "PROTOCOL.md §7 and tests/common/mod.rs"
                            } else {
                                "record_more() in tests/schema.rs"
                            }
                        )),
                    }
                }
            }
            (Some(names), _) => failures.push(format!("{name}: serde says {names:?}")),
        }
    }
    for name in names.keys() {
        if !defs.0.contains_key(name) {
            failures.push(format!("{name}: no sample reaches it"));
        }
    }
    for name in MESSAGE_ENUMS {
        let (Some(Def::Enum(all)), Some(Def::Enum(shown))) =
            (defs.0.get(name), examples.0.get(name))
        else {
            failures.push(format!("{name}: no golden example"));
            continue;
        };
        for (index, (variant, _)) in all {
            if !shown.contains_key(index) {
                failures.push(format!(
                    "{name}::{variant} has no golden example in PROTOCOL.md §7"
                ));
            }
        }
    }
    for (name, def) in &defs.0 {
        let shown = show(name, def);
        if shown.contains('?') {
            failures.push(format!(
                "{shown}: no sample has a value where `?` is (a Some, a non-empty list)"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}\n", failures.join("\n"));
    defs.0
}

// ---------------------------------------------------------------------------
// The document side: the `schema` blocks (notation in PROTOCOL.md §2.1).

fn schema_text(doc: &str) -> String {
    let mut text = String::new();
    let mut inside = false;
    for line in doc.lines() {
        let line = line.trim();
        if !inside {
            inside = line == "```schema";
        } else if line == "```" {
            inside = false;
        } else {
            text.push_str(line.split("//").next().unwrap());
            text.push('\n');
        }
    }
    assert!(!inside, "a ```schema block is not closed");
    text
}

fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c.is_alphanumeric() || c == '_' {
            let mut word = String::new();
            while let Some(&c) = chars.peek().filter(|c| c.is_alphanumeric() || **c == '_') {
                word.push(c);
                chars.next();
            }
            out.push(word);
        } else {
            assert!("{}()[]<>,:".contains(c), "schema: unexpected {c:?}");
            out.push(c.to_string());
            chars.next();
        }
    }
    out
}

struct Parser {
    tokens: Vec<String>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.at).map(String::as_str)
    }

    fn next(&mut self) -> String {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token.unwrap_or_else(|| panic!("schema: ends too soon"))
    }

    fn expect(&mut self, want: &str) {
        let got = self.next();
        assert_eq!(got, want, "schema: wanted {want:?} near token {}", self.at);
    }

    /// `,`-separated items up to `close`, a trailing `,` allowed.
    fn list<T>(&mut self, close: &str, mut item: impl FnMut(&mut Self) -> T) -> Vec<T> {
        let mut items = Vec::new();
        while self.peek() != Some(close) {
            items.push(item(self));
            if self.peek() == Some(",") {
                self.next();
            } else {
                break;
            }
        }
        self.expect(close);
        items
    }

    fn ty(&mut self) -> Ty {
        let token = self.next();
        match token.as_str() {
            "[" => {
                let item = self.ty();
                self.expect("]");
                Ty::List(Box::new(item))
            }
            "Option" => {
                self.expect("<");
                let inner = self.ty();
                self.expect(">");
                Ty::Option(Box::new(inner))
            }
            "bytes" => Ty::List(Box::new(Ty::Prim("u8".into()))),
            "u8" | "u16" | "u32" | "u64" | "bool" | "str" => Ty::Prim(token),
            _ => Ty::Named(token),
        }
    }

    fn fields(&mut self) -> Vec<(String, Ty)> {
        self.expect("{");
        self.list("}", |p| {
            let name = p.next();
            p.expect(":");
            (name, p.ty())
        })
    }

    fn defs(&mut self) -> Vec<(String, Def)> {
        let mut defs = Vec::new();
        while let Some(keyword) = self.peek().map(String::from) {
            self.next();
            let name = self.next();
            let def = match keyword.as_str() {
                "struct" => Def::Struct(self.fields()),
                "enum" => {
                    self.expect("{");
                    let variants = self.list("}", |p| {
                        let index = p.next();
                        let index: u32 = index
                            .parse()
                            .unwrap_or_else(|_| panic!("schema: {name}: variant index {index:?}"));
                        let variant = p.next();
                        let shape = match p.peek() {
                            Some("(") => {
                                p.next();
                                let ty = p.ty();
                                p.expect(")");
                                Shape::Newtype(ty)
                            }
                            Some("{") => Shape::Struct(p.fields()),
                            _ => Shape::Unit,
                        };
                        (index, (variant, shape))
                    });
                    let count = variants.len();
                    let variants: BTreeMap<_, _> = variants.into_iter().collect();
                    assert_eq!(
                        variants.len(),
                        count,
                        "schema: {name} repeats a variant index"
                    );
                    Def::Enum(variants)
                }
                other => panic!("schema: wanted struct or enum, found {other:?}"),
            };
            defs.push((name, def));
        }
        defs
    }
}

fn doc_defs(doc: &str) -> BTreeMap<String, Def> {
    let mut parser = Parser {
        tokens: tokens(&schema_text(doc)),
        at: 0,
    };
    let mut defs = BTreeMap::new();
    for (name, def) in parser.defs() {
        assert!(
            defs.insert(name.clone(), def).is_none(),
            "PROTOCOL.md defines {name} twice"
        );
    }
    defs
}

#[test]
fn every_message_matches_the_document_field_for_field() {
    let code = code_defs();
    let doc = doc_defs(common::DOC);
    let mut failures = Vec::new();
    for (name, def) in &code {
        match doc.get(name) {
            None => failures.push(format!("PROTOCOL.md lacks\n    {}", show(name, def))),
            Some(written) if written != def => failures.push(format!(
                "PROTOCOL.md has\n    {}\n  the code has\n    {}",
                show(name, written),
                show(name, def)
            )),
            Some(_) => {}
        }
    }
    for name in doc.keys().filter(|name| !code.contains_key(*name)) {
        failures.push(format!(
            "PROTOCOL.md defines {name}, which the code does not have"
        ));
    }
    assert!(failures.is_empty(), "\n{}\n", failures.join("\n"));
}

// ---------------------------------------------------------------------------
// Codes and constants: tables after `<!-- codes: NAME -->` / `<!-- constants -->`.

/// The first two cells of every row of the table after `marker`.
fn table(doc: &str, marker: &str) -> Vec<(String, String)> {
    let mut lines = doc.lines().map(str::trim).skip_while(|l| *l != marker);
    assert!(lines.next().is_some(), "PROTOCOL.md has no {marker}");
    lines
        .take_while(|l| l.starts_with('|'))
        .skip(2) // the header and the |---| line
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let cell = |i: usize| cells[i].trim_matches('`').to_string();
            (cell(1), cell(2))
        })
        .collect()
}

/// Every value of an enum, in order; `next` is an exhaustive match, so a new
/// variant does not compile until it is placed here.
fn all<T: Copy>(first: T, next: fn(T) -> Option<T>) -> Vec<T> {
    std::iter::successors(Some(first), |&c| next(c)).collect()
}

fn code_rows<T: Copy + fmt::Debug>(codes: Vec<T>, number: fn(T) -> u32) -> Vec<(String, String)> {
    codes
        .into_iter()
        .map(|c| (number(c).to_string(), format!("{c:?}")))
        .collect()
}

#[test]
fn codes_match_the_document() {
    use CloseCode::*;
    let close = all(Normal, |c| match c {
        Normal => Some(Refused),
        Refused => Some(Timeout),
        Timeout => Some(ProtocolError),
        ProtocolError => Some(Replaced),
        Replaced => None,
    });
    assert_eq!(
        table(common::DOC, "<!-- codes: CloseCode -->"),
        code_rows(close, |c| c as u32)
    );

    let reset = all(ResetCode::Cancelled, |c| match c {
        ResetCode::Cancelled => Some(ResetCode::UpstreamAborted),
        ResetCode::UpstreamAborted => Some(ResetCode::ProtocolError),
        ResetCode::ProtocolError => None,
    });
    assert_eq!(
        table(common::DOC, "<!-- codes: ResetCode -->"),
        code_rows(reset, |c| c as u32)
    );

    let room = [
        (room_close::AUTH_TIMEOUT, "AUTH_TIMEOUT"),
        (room_close::TOO_SLOW, "TOO_SLOW"),
        (room_close::AGENT_GONE, "AGENT_GONE"),
    ];
    let room: Vec<_> = room
        .iter()
        .map(|(c, n)| (c.to_string(), n.to_string()))
        .collect();
    assert_eq!(table(common::DOC, "<!-- codes: room_close -->"), room);
}

#[test]
fn constants_match_the_document() {
    let quoted = |s: &str| format!("{s:?}");
    let want: Vec<(String, String)> = [
        ("PROTOCOL_VERSION", PROTOCOL_VERSION.to_string()),
        ("ALPN", quoted(std::str::from_utf8(ALPN).unwrap())),
        ("LEN_PREFIX", LEN_PREFIX.to_string()),
        ("MAX_CONTROL_FRAME", MAX_CONTROL_FRAME.to_string()),
        ("DEFAULT_MAX_HEAD_FRAME", DEFAULT_MAX_HEAD_FRAME.to_string()),
        ("ROOM_FRAME_LIMIT", ROOM_FRAME_LIMIT.to_string()),
        ("capability::ROOMS_AUTH", quoted(capability::ROOMS_AUTH)),
        ("capability::CREDIT", quoted(capability::CREDIT)),
        ("capability::ADDRESSES", quoted(capability::ADDRESSES)),
        ("capability::TRAILERS", quoted(capability::TRAILERS)),
        ("INITIAL_CREDIT", INITIAL_CREDIT.to_string()),
        ("MAX_DATA_PART", MAX_DATA_PART.to_string()),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), v))
    .collect();
    assert_eq!(table(common::DOC, "<!-- constants -->"), want);
}
