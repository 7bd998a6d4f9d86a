//! The FHIRPath grammar (N1) as a precedence-climbing parser, producing a checked AST: function
//! names and arities, type specifiers and literals are validated here, so evaluation never
//! meets a malformed tree.

use regex::Regex;

use super::ParseError;
use super::decimal::Decimal;
use super::lexer::{Tok, Token, tokenize};
use super::temporal::{Precision, Temporal, calendar_unit};
use super::types::TypeSpec;

/// The deepest AST accepted (and so the deepest evaluation recursion).
pub const MAX_DEPTH: u32 = 64;

/// The deepest nesting of sub-expressions (parentheses, arguments, indexes, unary signs) the
/// parser accepts: its recursion depth. Debug builds use about 12 KiB of stack per level.
pub const MAX_NESTING: u32 = 32;

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Mul,
    Div,
    IntDiv,
    Mod,
    Add,
    Sub,
    Concat,
    Lt,
    Gt,
    Le,
    Ge,
    Eq,
    Equiv,
    Ne,
    NotEquiv,
    In,
    Contains,
    And,
    Or,
    Xor,
    Implies,
}

/// One AST node and where it starts in the source.
#[derive(Debug, Clone)]
pub(crate) struct Ast {
    pub kind: Kind,
    pub pos: usize,
    depth: u32,
}

/// AST node kinds.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// `{}`
    Empty,
    Bool(bool),
    Str(String),
    Int(i64),
    Dec(Decimal),
    Date(Temporal),
    DateTime(Temporal),
    Time(Temporal),
    Quantity(Decimal, String),
    This,
    Index,
    Total,
    /// `%name`
    Const(String),
    /// An identifier: on its own (target `None`, applied to the focus) or after a `.`.
    Member(Option<Box<Ast>>, String),
    /// A function call, on a target or on the focus.
    Call(Option<Box<Ast>>, Func, Vec<Ast>),
    /// `target[index]`
    Indexer(Box<Ast>, Box<Ast>),
    /// Unary minus.
    Neg(Box<Ast>),
    Binary(BinOp, Box<Ast>, Box<Ast>),
    /// A chain of `|` operands.
    Union(Vec<Ast>),
}

macro_rules! funcs {
    ($($variant:ident => $name:literal, $min:literal, $max:literal;)*) => {
        /// The functions known to the engine (type-specifier functions are separate variants).
        #[derive(Debug, Clone)]
        pub(crate) enum Func {
            $($variant,)*
            /// `is(T)` and the `is` operator.
            Is(TypeSpec),
            /// `as(T)` and the `as` operator.
            As(TypeSpec),
            /// `ofType(T)`.
            OfType(TypeSpec),
            /// `matches`, `matchesFull`, `replaceMatches` with a literal pattern, compiled once.
            Regex(RegexFn, Option<Box<Regex>>),
        }

        fn lookup(name: &str) -> Option<(Func, usize, usize)> {
            match name {
                $($name => Some((Func::$variant, $min, $max)),)*
                _ => None,
            }
        }
    };
}

/// The regular-expression functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RegexFn {
    Matches,
    MatchesFull,
    ReplaceMatches,
}

funcs! {
    Empty => "empty", 0, 0;
    Exists => "exists", 0, 1;
    All => "all", 1, 1;
    AllTrue => "allTrue", 0, 0;
    AnyTrue => "anyTrue", 0, 0;
    AllFalse => "allFalse", 0, 0;
    AnyFalse => "anyFalse", 0, 0;
    SubsetOf => "subsetOf", 1, 1;
    SupersetOf => "supersetOf", 1, 1;
    Count => "count", 0, 0;
    Distinct => "distinct", 0, 0;
    IsDistinct => "isDistinct", 0, 0;
    Where => "where", 1, 1;
    Select => "select", 1, 1;
    Repeat => "repeat", 1, 1;
    Single => "single", 0, 0;
    First => "first", 0, 0;
    Last => "last", 0, 0;
    Tail => "tail", 0, 0;
    Skip => "skip", 1, 1;
    Take => "take", 1, 1;
    Intersect => "intersect", 1, 1;
    Exclude => "exclude", 1, 1;
    Union => "union", 1, 1;
    Combine => "combine", 1, 1;
    Iif => "iif", 2, 3;
    ToBoolean => "toBoolean", 0, 0;
    ConvertsToBoolean => "convertsToBoolean", 0, 0;
    ToInteger => "toInteger", 0, 0;
    ConvertsToInteger => "convertsToInteger", 0, 0;
    ToLong => "toLong", 0, 0;
    ConvertsToLong => "convertsToLong", 0, 0;
    ToDate => "toDate", 0, 0;
    ConvertsToDate => "convertsToDate", 0, 0;
    ToDateTime => "toDateTime", 0, 0;
    ConvertsToDateTime => "convertsToDateTime", 0, 0;
    ToDecimal => "toDecimal", 0, 0;
    ConvertsToDecimal => "convertsToDecimal", 0, 0;
    ToQuantity => "toQuantity", 0, 1;
    ConvertsToQuantity => "convertsToQuantity", 0, 1;
    ToStr => "toString", 0, 0;
    ConvertsToString => "convertsToString", 0, 0;
    ToTime => "toTime", 0, 0;
    ConvertsToTime => "convertsToTime", 0, 0;
    IndexOf => "indexOf", 1, 1;
    LastIndexOf => "lastIndexOf", 1, 1;
    Substring => "substring", 1, 2;
    StartsWith => "startsWith", 1, 1;
    EndsWith => "endsWith", 1, 1;
    Contains => "contains", 1, 1;
    Upper => "upper", 0, 0;
    Lower => "lower", 0, 0;
    Replace => "replace", 2, 2;
    Length => "length", 0, 0;
    ToChars => "toChars", 0, 0;
    Trim => "trim", 0, 0;
    Split => "split", 1, 1;
    Join => "join", 0, 1;
    Encode => "encode", 1, 1;
    Decode => "decode", 1, 1;
    Escape => "escape", 1, 1;
    Unescape => "unescape", 1, 1;
    Abs => "abs", 0, 0;
    Ceiling => "ceiling", 0, 0;
    Exp => "exp", 0, 0;
    Floor => "floor", 0, 0;
    Ln => "ln", 0, 0;
    Log => "log", 1, 1;
    Power => "power", 1, 1;
    Round => "round", 0, 1;
    Sqrt => "sqrt", 0, 0;
    Truncate => "truncate", 0, 0;
    Children => "children", 0, 0;
    Descendants => "descendants", 0, 0;
    Trace => "trace", 1, 2;
    Now => "now", 0, 0;
    TimeOfDay => "timeOfDay", 0, 0;
    Today => "today", 0, 0;
    Not => "not", 0, 0;
    Aggregate => "aggregate", 1, 2;
    Type => "type", 0, 0;
    Extension => "extension", 1, 1;
    HasValue => "hasValue", 0, 0;
    GetValue => "getValue", 0, 0;
    Resolve => "resolve", 0, 0;
    MemberOf => "memberOf", 1, 1;
    ConformsTo => "conformsTo", 1, 1;
    Subsumes => "subsumes", 1, 1;
    SubsumedBy => "subsumedBy", 1, 1;
    HtmlChecks => "htmlChecks", 0, 0;
    HtmlChecks2 => "htmlchecks", 0, 0;
    LowBoundary => "lowBoundary", 0, 1;
    HighBoundary => "highBoundary", 0, 1;
    Precision => "precision", 0, 0;
    Comparable => "comparable", 1, 1;
    Sort => "sort", 0, 16;
}

impl Ast {
    fn new(kind: Kind, pos: usize, src: &str) -> Result<Ast, ParseError> {
        let child = |a: &Ast| a.depth;
        let depth = 1 + match &kind {
            Kind::Member(Some(t), _) | Kind::Neg(t) => child(t),
            Kind::Call(t, _, args) => t
                .as_deref()
                .map(child)
                .into_iter()
                .chain(args.iter().map(child))
                .max()
                .unwrap_or(0),
            Kind::Indexer(a, b) | Kind::Binary(_, a, b) => child(a).max(child(b)),
            Kind::Union(items) => items.iter().map(child).max().unwrap_or(0),
            _ => 0,
        };
        if depth > MAX_DEPTH {
            return Err(ParseError::new(src, pos, "expression is nested too deeply"));
        }
        Ok(Ast { kind, pos, depth })
    }
}

struct Parser<'s> {
    src: &'s str,
    toks: Vec<Token>,
    i: usize,
    nesting: u32,
}

/// Parses a whole expression.
pub(crate) fn parse(src: &str) -> Result<Ast, ParseError> {
    let toks = tokenize(src)?;
    let mut p = Parser {
        src,
        toks,
        i: 0,
        nesting: 0,
    };
    let e = p.expr()?;
    if !matches!(p.peek(), Tok::Eof) {
        return Err(p.err_here(format!("unexpected {}", describe(p.peek()))));
    }
    Ok(e)
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("'{s}'"),
        Tok::Delimited(s) => format!("`{s}`"),
        Tok::Str(_) => "string literal".into(),
        Tok::Number(s) | Tok::Long(s) => format!("number {s}"),
        Tok::DateTime(s) => format!("'@{s}'"),
        Tok::Time(s) => format!("'@T{s}'"),
        Tok::Constant(s) => format!("'%{s}'"),
        Tok::Special(s) => format!("'${s}'"),
        Tok::Sym(s) => format!("'{s}'"),
        Tok::Eof => "end of expression".into(),
    }
}

/// What an infix token does, and how tightly it binds (higher binds tighter).
#[derive(Clone, Copy)]
enum Infix {
    Bin(BinOp),
    Union,
    /// `is` (true) or `as` (false), followed by a type specifier.
    Type(bool),
}

fn infix(tok: &Tok) -> Option<(Infix, u8)> {
    let text = match tok {
        Tok::Sym(s) => *s,
        Tok::Ident(s) => s.as_str(),
        _ => return None,
    };
    use BinOp::*;
    Some(match text {
        "implies" => (Infix::Bin(Implies), 1),
        "or" => (Infix::Bin(Or), 2),
        "xor" => (Infix::Bin(Xor), 2),
        "and" => (Infix::Bin(And), 3),
        "in" => (Infix::Bin(In), 4),
        "contains" => (Infix::Bin(Contains), 4),
        "=" => (Infix::Bin(Eq), 5),
        "~" => (Infix::Bin(Equiv), 5),
        "!=" => (Infix::Bin(Ne), 5),
        "!~" => (Infix::Bin(NotEquiv), 5),
        "<=" => (Infix::Bin(Le), 6),
        "<" => (Infix::Bin(Lt), 6),
        ">=" => (Infix::Bin(Ge), 6),
        ">" => (Infix::Bin(Gt), 6),
        "|" => (Infix::Union, 7),
        "is" => (Infix::Type(true), 8),
        "as" => (Infix::Type(false), 8),
        "+" => (Infix::Bin(Add), 9),
        "-" => (Infix::Bin(Sub), 9),
        "&" => (Infix::Bin(Concat), 9),
        "*" => (Infix::Bin(Mul), 10),
        "/" => (Infix::Bin(Div), 10),
        "div" => (Infix::Bin(IntDiv), 10),
        "mod" => (Infix::Bin(Mod), 10),
        _ => return None,
    })
}

impl<'s> Parser<'s> {
    fn peek(&self) -> &Tok {
        self.toks.get(self.i).map_or(&Tok::Eof, |t| &t.tok)
    }

    fn peek_at(&self, n: usize) -> &Tok {
        self.toks.get(self.i + n).map_or(&Tok::Eof, |t| &t.tok)
    }

    fn pos(&self) -> usize {
        self.toks.get(self.i).map_or(self.src.len(), |t| t.pos)
    }

    fn bump(&mut self) -> Tok {
        let t = self.peek().clone();
        if self.i < self.toks.len() {
            self.i += 1;
        }
        t
    }

    fn err_here(&self, msg: impl Into<String>) -> ParseError {
        ParseError::new(self.src, self.pos(), msg)
    }

    fn expect_sym(&mut self, sym: &str) -> Result<(), ParseError> {
        if matches!(self.peek(), Tok::Sym(s) if *s == sym) {
            self.bump();
            Ok(())
        } else {
            Err(self.unexpected(&format!("'{sym}'")))
        }
    }

    /// "expected X, found Y" at the current token (out of line: keeps recursive frames small).
    #[inline(never)]
    fn unexpected(&self, expected: &str) -> ParseError {
        self.err_here(format!(
            "expected {expected}, found {}",
            describe(self.peek())
        ))
    }

    fn node(&self, kind: Kind, pos: usize) -> Result<Ast, ParseError> {
        Ast::new(kind, pos, self.src)
    }

    /// A whole sub-expression (the source, parentheses, an argument, an index), with its
    /// recursion bounded.
    fn expr(&mut self) -> Result<Ast, ParseError> {
        self.nesting += 1;
        if self.nesting > MAX_NESTING {
            return Err(self.err_here("expression is nested too deeply"));
        }
        let r = self.binary(0);
        self.nesting -= 1;
        r
    }

    /// Operators binding tighter than `min` (precedence climbing; left-associative).
    fn binary(&mut self, min: u8) -> Result<Ast, ParseError> {
        let start = self.pos();
        let mut left = self.unary()?;
        while let Some((op, prec)) = infix(self.peek()) {
            if prec <= min {
                break;
            }
            let pos = self.pos();
            self.bump();
            left = match op {
                Infix::Type(is) => {
                    let ts = self.type_specifier()?;
                    let func = if is { Func::Is(ts) } else { Func::As(ts) };
                    self.node(Kind::Call(Some(Box::new(left)), func, Vec::new()), pos)?
                }
                Infix::Union => {
                    let right = self.binary(prec)?;
                    match left.kind {
                        Kind::Union(mut items) if left.pos == start => {
                            items.push(right);
                            self.node(Kind::Union(items), start)?
                        }
                        kind => {
                            let first = Ast {
                                kind,
                                pos: left.pos,
                                depth: left.depth,
                            };
                            self.node(Kind::Union(vec![first, right]), start)?
                        }
                    }
                }
                Infix::Bin(op) => {
                    let right = self.binary(prec)?;
                    self.node(Kind::Binary(op, Box::new(left), Box::new(right)), pos)?
                }
            };
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Ast, ParseError> {
        match self.peek() {
            Tok::Sym("-") => {
                let pos = self.pos();
                self.bump();
                self.nesting += 1;
                if self.nesting > MAX_NESTING {
                    return Err(self.err_here("expression is nested too deeply"));
                }
                let inner = self.unary();
                self.nesting -= 1;
                let inner = inner?;
                // Fold negative numeric literals so that `-1` is a literal.
                match inner.kind {
                    Kind::Int(v) => self.node(Kind::Int(-v), pos),
                    Kind::Dec(d) => self.node(Kind::Dec(d.negated()), pos),
                    Kind::Quantity(d, u) => self.node(Kind::Quantity(d.negated(), u), pos),
                    _ => self.node(Kind::Neg(Box::new(inner)), pos),
                }
            }
            Tok::Sym("+") => {
                self.bump();
                self.nesting += 1;
                if self.nesting > MAX_NESTING {
                    return Err(self.err_here("expression is nested too deeply"));
                }
                let r = self.unary();
                self.nesting -= 1;
                r
            }
            _ => self.postfix(),
        }
    }

    fn postfix(&mut self) -> Result<Ast, ParseError> {
        let mut e = self.term()?;
        loop {
            match self.peek() {
                Tok::Sym(".") => {
                    self.bump();
                    e = self.invocation(Some(e))?;
                }
                Tok::Sym("[") => {
                    let pos = self.pos();
                    self.bump();
                    let idx = self.expr()?;
                    self.expect_sym("]")?;
                    e = self.node(Kind::Indexer(Box::new(e), Box::new(idx)), pos)?;
                }
                _ => return Ok(e),
            }
        }
    }

    /// An identifier or function call, after a `.` (target given) or as a term.
    fn invocation(&mut self, target: Option<Ast>) -> Result<Ast, ParseError> {
        let pos = self.pos();
        let name = match self.peek() {
            Tok::Ident(s) | Tok::Delimited(s) => s.clone(),
            Tok::Special(s) if target.is_none() => {
                let kind = match s.as_str() {
                    "this" => Kind::This,
                    "index" => Kind::Index,
                    _ => Kind::Total,
                };
                self.bump();
                return self.node(kind, pos);
            }
            _ => return Err(self.unexpected("an identifier or function call")),
        };
        let delimited = matches!(self.peek(), Tok::Delimited(_));
        self.bump();
        if !delimited && matches!(self.peek(), Tok::Sym("(")) {
            self.bump();
            let mut args = Vec::new();
            if !matches!(self.peek(), Tok::Sym(")")) {
                loop {
                    args.push(self.expr()?);
                    if matches!(self.peek(), Tok::Sym(",")) {
                        self.bump();
                        continue;
                    }
                    break;
                }
            }
            self.expect_sym(")")?;
            let func = self.function(&name, pos, &mut args)?;
            return self.node(Kind::Call(target.map(Box::new), func, args), pos);
        }
        self.node(Kind::Member(target.map(Box::new), name), pos)
    }

    fn function(&self, name: &str, pos: usize, args: &mut Vec<Ast>) -> Result<Func, ParseError> {
        let err = |msg: String| ParseError::new(self.src, pos, msg);
        if matches!(name, "is" | "as" | "ofType") {
            if args.len() != 1 {
                return Err(err(format!("{name}() takes exactly one type argument")));
            }
            let ts = type_from_ast(&args[0])
                .ok_or_else(|| err(format!("{name}() expects a type name")))?;
            let ts = TypeSpec::resolve(&ts.0, &ts.1)
                .map_err(|m| ParseError::new(self.src, args[0].pos, m))?;
            args.clear();
            return Ok(match name {
                "is" => Func::Is(ts),
                "as" => Func::As(ts),
                _ => Func::OfType(ts),
            });
        }
        let regex_fn = match name {
            "matches" => Some((RegexFn::Matches, 1)),
            "matchesFull" => Some((RegexFn::MatchesFull, 1)),
            "replaceMatches" => Some((RegexFn::ReplaceMatches, 2)),
            _ => None,
        };
        if let Some((rf, n)) = regex_fn {
            if args.len() != n {
                return Err(err(format!(
                    "{name}() takes {n} argument{}",
                    if n == 1 { "" } else { "s" }
                )));
            }
            let compiled = match &args[0].kind {
                Kind::Str(pat) => Some(Box::new(compile_regex(pat, rf).map_err(|m| {
                    ParseError::new(
                        self.src,
                        args[0].pos,
                        format!("invalid regular expression: {m}"),
                    )
                })?)),
                _ => None,
            };
            return Ok(Func::Regex(rf, compiled));
        }
        let Some((f, min, max)) = lookup(name) else {
            return Err(err(format!("unknown function '{name}'")));
        };
        if args.len() < min || args.len() > max {
            let expected = if min == max {
                format!("{min}")
            } else {
                format!("{min} to {max}")
            };
            return Err(err(format!(
                "{name}() takes {expected} argument{}, got {}",
                if max == 1 && min == max { "" } else { "s" },
                args.len()
            )));
        }
        Ok(f)
    }

    fn type_specifier(&mut self) -> Result<TypeSpec, ParseError> {
        let pos = self.pos();
        let mut parts = Vec::new();
        loop {
            match self.peek() {
                Tok::Ident(s) | Tok::Delimited(s) => parts.push(s.clone()),
                other => {
                    return Err(
                        self.err_here(format!("expected a type name, found {}", describe(other)))
                    );
                }
            }
            self.bump();
            if matches!(self.peek(), Tok::Sym("."))
                && matches!(self.peek_at(1), Tok::Ident(_) | Tok::Delimited(_))
                && parts.len() == 1
            {
                self.bump();
                continue;
            }
            break;
        }
        let (ns, name) = if parts.len() == 2 {
            (Some(parts[0].clone()), parts[1].clone())
        } else {
            (None, parts[0].clone())
        };
        TypeSpec::resolve(&ns, &name).map_err(|m| ParseError::new(self.src, pos, m))
    }

    fn term(&mut self) -> Result<Ast, ParseError> {
        match self.peek() {
            Tok::Sym("(") => {
                self.bump();
                let e = self.expr()?;
                self.expect_sym(")")?;
                Ok(e)
            }
            Tok::Ident(s)
                if !matches!(
                    s.as_str(),
                    "true" | "false" | "and" | "or" | "xor" | "implies" | "div" | "mod"
                ) =>
            {
                self.invocation(None)
            }
            Tok::Delimited(_) | Tok::Special(_) => self.invocation(None),
            _ => self.literal(),
        }
    }

    /// Literals and misplaced tokens: kept out of `term`, which is on the recursion path.
    #[inline(never)]
    fn literal(&mut self) -> Result<Ast, ParseError> {
        let pos = self.pos();
        let tok = self.peek().clone();
        match tok {
            Tok::Sym("{") => {
                self.bump();
                self.expect_sym("}")?;
                self.node(Kind::Empty, pos)
            }
            Tok::Str(s) => {
                self.bump();
                self.node(Kind::Str(s), pos)
            }
            Tok::Number(n) => {
                self.bump();
                let value = Decimal::parse(&n)
                    .ok_or_else(|| ParseError::new(self.src, pos, format!("invalid number {n}")))?;
                // A quantity: a number followed by a unit string or a calendar keyword.
                match self.peek().clone() {
                    Tok::Str(unit) => {
                        self.bump();
                        return self.node(Kind::Quantity(value, unit), pos);
                    }
                    Tok::Ident(unit) if is_calendar_keyword(&unit) => {
                        self.bump();
                        return self.node(Kind::Quantity(value, unit), pos);
                    }
                    _ => {}
                }
                if n.contains('.') {
                    self.node(Kind::Dec(value), pos)
                } else {
                    let v: i64 = n.parse().map_err(|_| {
                        ParseError::new(self.src, pos, format!("integer {n} is too large"))
                    })?;
                    self.node(Kind::Int(v), pos)
                }
            }
            Tok::Long(n) => {
                self.bump();
                let v: i64 = n.parse().map_err(|_| {
                    ParseError::new(self.src, pos, format!("long {n} is too large"))
                })?;
                self.node(Kind::Int(v), pos)
            }
            Tok::DateTime(s) => {
                self.bump();
                let (t, has_t) = Temporal::parse_date_time(&s).ok_or_else(|| {
                    ParseError::new(self.src, pos, format!("invalid date/time literal @{s}"))
                })?;
                if has_t {
                    self.node(Kind::DateTime(t), pos)
                } else {
                    self.node(Kind::Date(t), pos)
                }
            }
            Tok::Time(s) => {
                self.bump();
                let t = Temporal::parse_time(&s).ok_or_else(|| {
                    ParseError::new(self.src, pos, format!("invalid time literal @T{s}"))
                })?;
                debug_assert!(t.precision >= Precision::Hour);
                self.node(Kind::Time(t), pos)
            }
            Tok::Constant(name) => {
                self.bump();
                self.node(Kind::Const(name), pos)
            }
            Tok::Ident(ref s) if s == "true" || s == "false" => {
                self.bump();
                self.node(Kind::Bool(s == "true"), pos)
            }
            Tok::Ident(ref s)
                if matches!(s.as_str(), "and" | "or" | "xor" | "implies" | "div" | "mod") =>
            {
                Err(self.err_here(format!("expected an expression, found '{s}'")))
            }
            Tok::Ident(_) | Tok::Delimited(_) | Tok::Special(_) => self.invocation(None),
            other => Err(self.err_here(format!(
                "expected an expression, found {}",
                describe(&other)
            ))),
        }
    }
}

/// The calendar-duration keywords of quantity literals (`4 days`).
fn is_calendar_keyword(s: &str) -> bool {
    calendar_unit(s).is_some() && s.len() >= 3 && s != "min"
}

/// A type name written as an expression (function-call form `ofType(FHIR.Patient)`).
fn type_from_ast(a: &Ast) -> Option<(Option<String>, String)> {
    match &a.kind {
        Kind::Member(None, name) => Some((None, name.clone())),
        Kind::Member(Some(t), name) => match &t.kind {
            Kind::Member(None, ns) => Some((Some(ns.clone()), name.clone())),
            _ => None,
        },
        _ => None,
    }
}

/// Compiles a FHIRPath regular expression with a size limit (patterns may be untrusted).
pub(crate) fn compile_regex(pat: &str, f: RegexFn) -> Result<Regex, String> {
    let full;
    let pat = if f == RegexFn::MatchesFull {
        full = format!("^(?:{pat})$");
        &full
    } else {
        pat
    };
    regex::RegexBuilder::new(pat)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .dot_matches_new_line(true)
        .build()
        .map_err(|e| e.to_string())
}
