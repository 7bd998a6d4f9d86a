//! Search as SQL: a search's criteria (already parsed and typed by `fhir::search`) become one
//! statement over the index tables, every value a bound parameter — never SQL text.
//!
//! Each criterion is a semi-join `pk IN (SELECT resource_pk FROM ix_… WHERE res_type = ? AND
//! param = ? AND …)`, which both engines drive from the `(res_type, param, value)` index; chains
//! nest the same shape over the target type, and `_has` turns it around.

use diesel::QueryableByName;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Text};

use super::session::Session;
use super::{Db, StoreError};

/// How a date, number or quantity compares with a search value (R4 §3.1.1.4.1 prefixes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// A condition on the index rows of one parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// `code`, `system|code`, `|code` (system ''), `system|` (code None).
    Token {
        system: Option<String>,
        code: Option<String>,
    },
    /// Normalised prefix (the default string match).
    StringStarts(String),
    /// The exact value (`:exact`); `norm` is its normalised form, for the index.
    StringExact {
        norm: String,
        exact: String,
    },
    /// Normalised substring (`:contains`).
    StringContains(String),
    /// Any of these reference targets (`Type/id` or URLs).
    Reference(Vec<String>),
    /// The instant range `[low, high)` of the search value.
    Date {
        prefix: Prefix,
        low: i64,
        high: i64,
    },
    /// A number: `value` as given, `[low, high)` its implicit precision range.
    Number {
        prefix: Prefix,
        value: f64,
        low: f64,
        high: f64,
    },
    Quantity {
        prefix: Prefix,
        value: f64,
        low: f64,
        high: f64,
        system: Option<String>,
        code: Option<String>,
    },
    UriEq(String),
    /// `:below`: the value and every URI under it.
    UriBelow(String),
    /// `:above`: any of these (the value and its parents).
    UriAbove(Vec<String>),
    /// A composite `token$value`: the first component a token, the second by its own condition
    /// (Token, StringStarts, Reference, Date, Quantity).
    Composite {
        system1: Option<String>,
        code1: String,
        second: Box<Cond>,
    },
}

/// The index table a parameter type's rows live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexTable {
    String,
    Token,
    Reference,
    Date,
    Number,
    Quantity,
    Uri,
    Composite,
}

impl IndexTable {
    fn name(self) -> &'static str {
        match self {
            IndexTable::String => "ix_string",
            IndexTable::Token => "ix_token",
            IndexTable::Reference => "ix_reference",
            IndexTable::Date => "ix_date",
            IndexTable::Number => "ix_number",
            IndexTable::Quantity => "ix_quantity",
            IndexTable::Uri => "ix_uri",
            IndexTable::Composite => "ix_composite",
        }
    }
}

impl Cond {
    /// Whether the condition is a range of values (its index rows are not in key order).
    fn is_range(&self) -> bool {
        match self {
            Cond::Token { code, .. } => code.is_none(),
            Cond::StringExact { .. } | Cond::Reference(_) | Cond::UriEq(_) | Cond::UriAbove(_) => {
                false
            }
            // Its index leads with the first component's code: key order within it.
            Cond::Composite { .. } => false,
            _ => true,
        }
    }

    fn table(&self) -> IndexTable {
        match self {
            Cond::Token { .. } => IndexTable::Token,
            Cond::StringStarts(_) | Cond::StringExact { .. } | Cond::StringContains(_) => {
                IndexTable::String
            }
            Cond::Reference(_) => IndexTable::Reference,
            Cond::Date { .. } => IndexTable::Date,
            Cond::Number { .. } => IndexTable::Number,
            Cond::Quantity { .. } => IndexTable::Quantity,
            Cond::UriEq(_) | Cond::UriBelow(_) | Cond::UriAbove(_) => IndexTable::Uri,
            Cond::Composite { .. } => IndexTable::Composite,
        }
    }
}

/// One criterion of a search. A search is the AND of its filters.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Some index row of `param` meets any of the conditions (comma = OR).
    Any { param: String, conds: Vec<Cond> },
    /// No index row of `param` meets any of the conditions (`:not`).
    None { param: String, conds: Vec<Cond> },
    /// `:missing`: the resource has (false) or has no (true) value for the parameter.
    Missing {
        param: String,
        table: IndexTable,
        missing: bool,
    },
    /// `_id`: one of these ids.
    Id(Vec<String>),
    /// `_lastUpdated`: any of these conditions (Date conditions).
    LastUpdated(Vec<Cond>),
    /// A chain: the reference `param` points at a resource of one of `types` meeting `filters`.
    Chain {
        param: String,
        types: Vec<String>,
        filters: Vec<Filter>,
    },
    /// `_has`: some resource of `source_type` meeting `filters` points here through `param`.
    Has {
        source_type: String,
        param: String,
        filters: Vec<Filter>,
    },
    /// A compartment (R4 §3.1.0.4.1): the resource `Type/id` itself, and every resource that
    /// points at it through one of the parameters its type lists in the compartment's
    /// definition (`links`: resource type and parameters).
    Compartment {
        ty: String,
        id: String,
        links: Vec<(String, Vec<String>)>,
    },
    /// Matches nothing (a value that can never match, such as a reference to an unknown type).
    Nothing,
    /// One index row of `param` meets all the conditions: bounds on one date parameter
    /// (`date=ge…&date=lt…`) merged into one range, as HAPI does (see [`merge_ranges`]).
    Range { param: String, conds: Vec<Cond> },
}

/// Repeated date criteria of one parameter, each a single bound, become one range on one index
/// row: `date=ge2024-03-01&date=lt2024-03-02` asks for dates in March's first day, and a
/// range on one row is what the date index answers without scanning half the table.
pub fn merge_ranges(filters: &[Filter]) -> Vec<Filter> {
    let bound = |f: &Filter| match f {
        Filter::Any { param, conds } => match conds.as_slice() {
            [Cond::Date { prefix, .. }] if *prefix != Prefix::Ne => Some(param.clone()),
            _ => None,
        },
        _ => None,
    };
    let mut out: Vec<Filter> = Vec::with_capacity(filters.len());
    for f in filters {
        if let (Some(param), Filter::Any { conds, .. }) = (bound(f), f) {
            let merged = out.iter_mut().find_map(|o| match o {
                Filter::Range { param: p, conds } if *p == param => Some(conds),
                _ => None,
            });
            if let Some(range) = merged {
                range.extend(conds.iter().cloned());
                continue;
            }
            if filters
                .iter()
                .filter(|g| bound(g).as_deref() == Some(&param))
                .count()
                > 1
            {
                out.push(Filter::Range {
                    param,
                    conds: conds.clone(),
                });
                continue;
            }
        }
        out.push(f.clone());
    }
    out
}

/// How good a criterion is at driving a search (lower is better; None: it cannot drive). A
/// guess at selectivity from the criterion's kind: a reference or a chain names one resource,
/// a token with a system names one code, a date or number is a range.
fn driver_cost(f: &Filter) -> Option<u32> {
    let cond_cost = |c: &Cond| match c {
        Cond::Reference(_) => 1,
        Cond::Token {
            system: Some(_),
            code: Some(_),
        }
        | Cond::StringExact { .. }
        | Cond::UriEq(_)
        | Cond::UriAbove(_) => 2,
        Cond::Token { code: Some(_), .. } | Cond::Composite { .. } | Cond::StringStarts(_) => 3,
        Cond::Date { .. } | Cond::Number { .. } | Cond::Quantity { .. } | Cond::UriBelow(_) => 4,
        Cond::Token { code: None, .. } => 6,
        Cond::StringContains(_) => 8,
    };
    match f {
        Filter::Id(_) => Some(0),
        Filter::Chain { .. } | Filter::Compartment { .. } => Some(1),
        Filter::Any { conds, .. } if !conds.is_empty() && tables_of(conds).len() == 1 => {
            conds.iter().map(cond_cost).max()
        }
        Filter::Range { conds, .. } if !conds.is_empty() => Some(3),
        Filter::Missing { missing: false, .. } => Some(7),
        _ => None,
    }
}

/// The longest span of a narrow date row (31 days: an instant, a day, a month, an encounter);
/// wider rows (a year, an open period) are flagged `wide` in `ix_date`.
pub(crate) const NARROW_DATE_MS: i64 = 31 * 86_400_000;

/// One page of keys: after or before a key, at most `limit`, ascending or (backward) not.
struct Page {
    after: Option<i64>,
    before: Option<i64>,
    limit: i64,
    backward: bool,
}

/// A search to run: the resource types, the criteria, and the page wanted.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    /// The types searched (one for a type-level search; several or none for `_type` at system
    /// level: none means every type).
    pub types: Vec<String>,
    pub filters: Vec<Filter>,
    /// Keyset paging on the primary key: rows after (forward) or before (backward) this one.
    pub after: Option<i64>,
    pub before: Option<i64>,
    pub limit: i64,
    /// `_sort` keys; primary key order follows them (and alone orders an unsorted search).
    pub sort: Vec<SortKey>,
    /// Sorted paging: continue after the row with these sort values and primary key.
    pub sort_after: Option<(Vec<SortValue>, i64)>,
    /// Sorted paging backward: the rows just before the row with these values and key.
    pub sort_before: Option<(Vec<SortValue>, i64)>,
}

impl SearchQuery {
    /// The first `limit` resources of `types` meeting `filters`, in key order.
    pub fn unsorted(types: Vec<String>, filters: Vec<Filter>, limit: i64) -> SearchQuery {
        SearchQuery {
            types,
            filters,
            after: None,
            before: None,
            limit,
            sort: Vec::new(),
            sort_after: None,
            sort_before: None,
        }
    }
}

/// What a search sorts by.
#[derive(Debug, Clone, PartialEq)]
pub enum SortBy {
    Id,
    LastUpdated,
    /// The least (ascending) or greatest (descending) value of a parameter's index rows.
    Index {
        table: IndexTable,
        param: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct SortKey {
    pub by: SortBy,
    pub desc: bool,
}

/// The value of a sort key in a row (paging cursors carry them).
#[derive(Debug, Clone, PartialEq)]
pub enum SortValue {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
}

/// The kind of value a sort key holds.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Text,
    Int,
    Float,
}

impl SortBy {
    fn kind(&self) -> Kind {
        match self {
            SortBy::Id => Kind::Text,
            SortBy::LastUpdated => Kind::Int,
            SortBy::Index { table, .. } => match table {
                IndexTable::Date => Kind::Int,
                IndexTable::Number | IndexTable::Quantity => Kind::Float,
                _ => Kind::Text,
            },
        }
    }
}

#[derive(QueryableByName)]
struct TextVal {
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    v: Option<String>,
}

#[derive(QueryableByName)]
struct IntVal {
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    v: Option<i64>,
}

#[derive(QueryableByName)]
struct FloatVal {
    #[diesel(sql_type = diesel::sql_types::Nullable<Double>)]
    v: Option<f64>,
}

/// A row a search returns.
#[derive(Debug, Clone, QueryableByName)]
pub struct Found {
    #[diesel(sql_type = BigInt)]
    pub pk: i64,
    #[diesel(sql_type = Text)]
    pub res_type: String,
    #[diesel(sql_type = Text)]
    pub res_id: String,
    #[diesel(sql_type = BigInt)]
    pub version: i64,
    #[diesel(sql_type = BigInt)]
    pub last_updated: i64,
    #[diesel(sql_type = Text)]
    pub body: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Target {
    #[diesel(sql_type = BigInt)]
    resource_pk: i64,
    #[diesel(sql_type = Text)]
    target: String,
}

/// A bound value.
#[derive(Debug, Clone)]
enum Bind {
    Text(String),
    Int(i64),
    Float(f64),
}

/// SQL text with its bound values, placeholders in the engine's syntax.
struct Sql {
    /// The SQL without placeholders; `marks[i]` is where `binds[i]`'s goes.
    text: String,
    marks: Vec<usize>,
    binds: Vec<Bind>,
    /// Aliases handed out so far (nested subqueries get their own).
    aliases: usize,
}

impl Sql {
    fn new() -> Sql {
        Sql {
            text: String::with_capacity(512),
            marks: Vec::new(),
            binds: Vec::new(),
            aliases: 0,
        }
    }

    fn push(&mut self, s: &str) -> &mut Sql {
        self.text.push_str(s);
        self
    }

    fn bind(&mut self, b: Bind) -> &mut Sql {
        // The placeholder is the engine's to write (`$n` or `?`): remember where it goes.
        self.marks.push(self.text.len());
        self.binds.push(b);
        self
    }

    fn text(&mut self, s: &str) -> &mut Sql {
        self.bind(Bind::Text(s.to_string()))
    }

    fn int(&mut self, i: i64) -> &mut Sql {
        self.bind(Bind::Int(i))
    }

    fn float(&mut self, f: f64) -> &mut Sql {
        self.bind(Bind::Float(f))
    }

    fn list(&mut self, items: &[String]) -> &mut Sql {
        self.push("(");
        for (i, s) in items.iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.text(s);
        }
        self.push(")")
    }

    fn alias(&mut self, prefix: &str) -> String {
        self.aliases += 1;
        format!("{prefix}{}", self.aliases)
    }

    /// `col = ?` for one type, `col IN (...)` for several, nothing for none.
    fn types(&mut self, col: &str, types: &[String]) {
        match types {
            [] => {}
            [t] => {
                self.push(" AND ").push(col).push(" = ").text(t);
            }
            many => {
                self.push(" AND ").push(col).push(" IN ");
                self.list(many);
            }
        }
    }

    /// `SELECT <select> FROM <table> x WHERE x.param = ? [AND x.res_type ...]`: the index rows
    /// of one parameter of the given types (callers add conditions).
    fn param_rows(
        &mut self,
        select: &str,
        table: IndexTable,
        x: &str,
        param: &str,
        types: &[String],
    ) {
        self.push("SELECT ")
            .push(select)
            .push(" FROM ")
            .push(table.name())
            .push(" ")
            .push(x)
            .push(" WHERE ")
            .push(x)
            .push(".param = ")
            .text(param);
        self.types(&format!("{x}.res_type"), types);
    }

    /// `SELECT v.pk AS pk FROM resource_version v WHERE <v is current and live>`: the live
    /// versions (callers add conditions).
    fn live_versions(&mut self, v: &str) {
        self.push("SELECT ")
            .push(v)
            .push(".pk AS pk FROM resource_version ")
            .push(v)
            .push(" WHERE ")
            .push(v)
            .push(".is_current AND NOT ")
            .push(v)
            .push(".deleted");
    }

    /// `SELECT [DISTINCT] <pk> AS pk FROM ... WHERE ...`: the keys of the current, live
    /// resources of `types` meeting every filter, unordered and unlimited; `page` adds the
    /// keyset bound, order and limit of one page.
    ///
    /// One criterion drives (see [`driver_cost`]): its index rows come out of the index in key
    /// order, so a first page stops after `limit` matches; every other criterion is probed for
    /// each candidate through its table's `(resource_pk, param)` index. Index rows exist only
    /// for current, live versions, so a driver from an index table needs no look at the
    /// versions themselves.
    fn keys(&mut self, types: &[String], filters: &[Filter], page: Option<&Page>) {
        let driver = filters
            .iter()
            .enumerate()
            .filter_map(|(i, f)| driver_cost(f).map(|c| (c, i)))
            .min()
            .map(|(_, i)| i);
        let d = self.alias("d");
        let pk = match driver.map(|i| &filters[i]) {
            Some(Filter::Any { param, conds }) | Some(Filter::Range { param, conds }) => {
                let all = matches!(driver.map(|i| &filters[i]), Some(Filter::Range { .. }));
                let table = conds[0].table();
                if table == IndexTable::Date {
                    self.push("SELECT DISTINCT ")
                        .push(&d)
                        .push(".pk AS pk FROM (");
                    self.date_driver(types, param, conds, all);
                    self.push(") ").push(&d).push(" WHERE 1 = 1");
                    return self.rest_of_keys(&format!("{d}.pk"), driver, filters, page);
                }
                // A range's rows come out of its index in value order, not key order. Said
                // as `+ 0`, the key is no column a planner could walk an index of in key order
                // hoping to meet `limit` matches soon (PostgreSQL did, on (resource_pk,
                // param), and read every date row of the database to find none); the range's
                // matches are gathered from the value index and sorted instead.
                let ranged = all || conds.iter().any(Cond::is_range);
                let key = if ranged { "+ 0 AS pk" } else { "AS pk" };
                self.param_rows(
                    &format!("DISTINCT {d}.resource_pk {key}"),
                    table,
                    &d,
                    param,
                    types,
                );
                self.push(" AND ");
                self.conds(&d, conds, all);
                format!("{d}.resource_pk")
            }
            Some(Filter::Missing { param, table, .. }) => {
                self.param_rows(
                    &format!("DISTINCT {d}.resource_pk AS pk"),
                    *table,
                    &d,
                    param,
                    types,
                );
                format!("{d}.resource_pk")
            }
            Some(Filter::Chain {
                param,
                types: targets,
                filters: inner,
            }) => {
                let select = format!("DISTINCT {d}.resource_pk AS pk");
                self.param_rows(&select, IndexTable::Reference, &d, param, types);
                self.push(" AND ").push(&d).push(".target IN ");
                self.targets_of(targets, inner);
                format!("{d}.resource_pk")
            }
            Some(Filter::Compartment { ty, id, links }) => {
                // The resources linked to `ty/id`, and `ty/id` itself.
                let x = self.alias("x");
                let v = self.alias("v");
                self.push("SELECT ")
                    .push(&d)
                    .push(".pk AS pk FROM (SELECT ")
                    .push(&x)
                    .push(".resource_pk AS pk FROM ix_reference ")
                    .push(&x)
                    .push(" WHERE ")
                    .push(&x)
                    .push(".target = ")
                    .text(&format!("{ty}/{id}"))
                    .push(" AND ");
                self.links(&x, links);
                self.push(" UNION ");
                self.live_versions(&v);
                self.push(" AND ")
                    .push(&v)
                    .push(".res_type = ")
                    .text(ty)
                    .push(" AND ")
                    .push(&v)
                    .push(".res_id = ")
                    .text(id);
                self.types(&format!("{v}.res_type"), types);
                self.push(") ").push(&d).push(" WHERE 1 = 1");
                format!("{d}.pk")
            }
            Some(Filter::Id(ids)) => {
                self.live_versions(&d);
                self.push(" AND ").push(&d).push(".res_id IN ");
                self.list(ids);
                self.types(&format!("{d}.res_type"), types);
                format!("{d}.pk")
            }
            _ => {
                // The versions of the types, by the type index.
                self.live_versions(&d);
                self.types(&format!("{d}.res_type"), types);
                format!("{d}.pk")
            }
        };
        self.rest_of_keys(&pk, driver, filters, page)
    }

    /// The end of [`Sql::keys`]: every criterion but the driver probed for the key `pk`, and the
    /// page.
    fn rest_of_keys(
        &mut self,
        pk: &str,
        driver: Option<usize>,
        filters: &[Filter],
        page: Option<&Page>,
    ) {
        for (i, f) in filters.iter().enumerate() {
            if Some(i) == driver {
                continue;
            }
            self.push(" AND ");
            self.probe(pk, f);
        }
        if let Some(p) = page {
            if let Some(after) = p.after {
                self.push(" AND ").push(pk).push(" > ").int(after);
            }
            if let Some(before) = p.before {
                self.push(" AND ").push(pk).push(" < ").int(before);
            }
            self.push(" ORDER BY pk")
                .push(if p.backward { " DESC" } else { "" })
                .push(" LIMIT ")
                .int(p.limit);
        }
    }

    /// The index row aliased `x` is one of a compartment's links: `(res_type = ? AND param IN
    /// (...)) OR ...`.
    fn links(&mut self, x: &str, links: &[(String, Vec<String>)]) {
        self.push("(");
        for (i, (ty, params)) in links.iter().enumerate() {
            if i > 0 {
                self.push(" OR ");
            }
            self.push("(").push(x).push(".res_type = ").text(ty);
            self.push(" AND ").push(x).push(".param IN ");
            self.list(params);
            self.push(")");
        }
        if links.is_empty() {
            self.push("1 = 0");
        }
        self.push(")");
    }

    /// `(SELECT 'Type/id' ...)`: the references of the current, live resources of `types`
    /// meeting `filters` (the inside of a chain).
    fn targets_of(&mut self, types: &[String], filters: &[Filter]) {
        let t = self.alias("t");
        self.push("(SELECT ")
            .push(&t)
            .push(".res_type || '/' || ")
            .push(&t)
            .push(".res_id FROM resource_version ")
            .push(&t)
            .push(" WHERE ")
            .push(&t)
            .push(".pk IN (");
        self.keys(types, filters, None);
        self.push("))");
    }

    /// The conditions on the index row aliased `x`: any of them (comma), or all of them on
    /// the same row (a merged date range).
    fn conds(&mut self, x: &str, conds: &[Cond], all: bool) {
        self.push("(");
        for (i, c) in conds.iter().enumerate() {
            if i > 0 {
                self.push(if all { " AND " } else { " OR " });
            }
            self.push("(");
            self.cond(x, c);
            self.push(")");
        }
        if conds.is_empty() {
            self.push("1 = 0");
        }
        self.push(")");
    }

    /// The keys of the date rows of `param` meeting the conditions, said so that the date
    /// index walks a bounded stretch: narrow rows (spanning at most [`NARROW_DATE_MS`]) whose
    /// high end must reach some instant have their low end within that span before it; the
    /// few wide rows (a year, an open period) are read apart. Two selects joined by UNION ALL,
    /// so that each engine plans each on `(res_type, param, wide, low, ...)` without having to
    /// see through an OR.
    fn date_driver(&mut self, types: &[String], param: &str, conds: &[Cond], all: bool) {
        let reach = |c: &Cond| match c {
            Cond::Date { prefix, low, high } => match prefix {
                Prefix::Ge | Prefix::Eq => Some(*low),
                Prefix::Gt | Prefix::Sa => Some(*high),
                _ => None,
            },
            _ => None,
        };
        // The latest instant every matching row's high end reaches.
        let floor = if all {
            conds.iter().filter_map(reach).max()
        } else if let [one] = conds {
            reach(one)
        } else {
            None
        };
        for wide in [false, true] {
            let x = self.alias(if wide { "w" } else { "n" });
            if wide {
                self.push(" UNION ALL ");
            }
            self.param_rows(
                &format!("{x}.resource_pk AS pk"),
                IndexTable::Date,
                &x,
                param,
                types,
            );
            self.push(" AND ").push(&x).push(if wide {
                ".wide = TRUE"
            } else {
                ".wide = FALSE"
            });
            if let (false, Some(f)) = (wide, floor) {
                self.push(" AND ")
                    .push(&x)
                    .push(".low >= ")
                    .int(f.saturating_sub(NARROW_DATE_MS));
            }
            self.push(" AND ");
            self.conds(&x, conds, all);
        }
    }

    /// `[NOT] EXISTS` an index row of `param` for the resource `pk` meeting the conditions.
    fn exists(
        &mut self,
        pk: &str,
        negated: bool,
        table: IndexTable,
        param: &str,
        conds: &[Cond],
        all: bool,
    ) {
        let x = self.alias("x");
        self.push(if negated {
            "NOT EXISTS (SELECT 1 FROM "
        } else {
            "EXISTS (SELECT 1 FROM "
        })
        .push(table.name())
        .push(" ")
        .push(&x)
        .push(" WHERE ")
        .push(&x)
        .push(".resource_pk = ")
        .push(pk)
        .push(" AND ")
        .push(&x)
        .push(".param = ")
        .text(param);
        if !conds.is_empty() {
            self.push(" AND ");
            self.conds(&x, conds, all);
        }
        self.push(")");
    }

    /// A filter as a test of one candidate resource, by primary key.
    fn probe(&mut self, pk: &str, f: &Filter) {
        match f {
            Filter::Any { param, conds } | Filter::None { param, conds } => {
                let negated = matches!(f, Filter::None { .. });
                // Conditions on different tables cannot share a row; R4 values of one
                // parameter always share one table, so group by table.
                self.push("(");
                let tables = tables_of(conds);
                for (i, table) in tables.iter().enumerate() {
                    if i > 0 {
                        self.push(if negated { " AND " } else { " OR " });
                    }
                    let same: Vec<Cond> = conds
                        .iter()
                        .filter(|c| c.table() == *table)
                        .cloned()
                        .collect();
                    self.exists(pk, negated, *table, param, &same, false);
                }
                if tables.is_empty() {
                    self.push(if negated { "1 = 1" } else { "1 = 0" });
                }
                self.push(")");
            }
            Filter::Range { param, conds } => {
                let table = conds.first().map(Cond::table).unwrap_or(IndexTable::Date);
                self.exists(pk, false, table, param, conds, true);
            }
            Filter::Missing {
                param,
                table,
                missing,
            } => {
                self.exists(pk, *missing, *table, param, &[], false);
            }
            Filter::Id(ids) => {
                let v = self.alias("v");
                self.push("EXISTS (SELECT 1 FROM resource_version ")
                    .push(&v)
                    .push(" WHERE ")
                    .push(&v)
                    .push(".pk = ")
                    .push(pk)
                    .push(" AND ")
                    .push(&v)
                    .push(".res_id IN ");
                self.list(ids);
                self.push(")");
            }
            Filter::LastUpdated(conds) => {
                let v = self.alias("v");
                self.push("EXISTS (SELECT 1 FROM resource_version ")
                    .push(&v)
                    .push(" WHERE ")
                    .push(&v)
                    .push(".pk = ")
                    .push(pk)
                    .push(" AND (");
                for (i, c) in conds.iter().enumerate() {
                    if i > 0 {
                        self.push(" OR ");
                    }
                    if let Cond::Date { prefix, low, high } = c {
                        // A lastUpdated is an instant: the range of one millisecond.
                        let col = format!("{v}.last_updated");
                        let hi = format!("({v}.last_updated + 1)");
                        self.push("(");
                        self.date(&col, &hi, *prefix, *low, *high);
                        self.push(")");
                    } else {
                        self.push("1 = 0");
                    }
                }
                if conds.is_empty() {
                    self.push("1 = 0");
                }
                self.push("))");
            }
            Filter::Chain {
                param,
                types: targets,
                filters,
            } => {
                let x = self.alias("x");
                self.push("EXISTS (SELECT 1 FROM ix_reference ")
                    .push(&x)
                    .push(" WHERE ")
                    .push(&x)
                    .push(".resource_pk = ")
                    .push(pk)
                    .push(" AND ")
                    .push(&x)
                    .push(".param = ")
                    .text(param)
                    .push(" AND ")
                    .push(&x)
                    .push(".target IN ");
                self.targets_of(targets, filters);
                self.push(")");
            }
            Filter::Has {
                source_type,
                param,
                filters,
            } => {
                // Some `source_type` meeting `filters` points at this resource through
                // `param`: per candidate, its references by target (the target index), each
                // tested against the sources' keys.
                let v = self.alias("v");
                let r = self.alias("r");
                let src = [source_type.clone()];
                self.push("EXISTS (SELECT 1 FROM resource_version ")
                    .push(&v)
                    .push(", ix_reference ")
                    .push(&r)
                    .push(" WHERE ")
                    .push(&v)
                    .push(".pk = ")
                    .push(pk)
                    .push(" AND ")
                    .push(&r)
                    .push(".target = ")
                    .push(&v)
                    .push(".res_type || '/' || ")
                    .push(&v)
                    .push(".res_id AND ")
                    .push(&r)
                    .push(".param = ")
                    .text(param);
                self.types(&format!("{r}.res_type"), &src);
                self.push(" AND ").push(&r).push(".resource_pk IN (");
                self.keys(&src, filters, None);
                self.push("))");
            }
            Filter::Compartment { ty, id, links } => {
                let x = self.alias("x");
                let v = self.alias("v");
                self.push("(EXISTS (SELECT 1 FROM ix_reference ")
                    .push(&x)
                    .push(" WHERE ")
                    .push(&x)
                    .push(".resource_pk = ")
                    .push(pk)
                    .push(" AND ")
                    .push(&x)
                    .push(".target = ")
                    .text(&format!("{ty}/{id}"))
                    .push(" AND ");
                self.links(&x, links);
                self.push(") OR EXISTS (SELECT 1 FROM resource_version ")
                    .push(&v)
                    .push(" WHERE ")
                    .push(&v)
                    .push(".pk = ")
                    .push(pk)
                    .push(" AND ")
                    .push(&v)
                    .push(".res_type = ")
                    .text(ty)
                    .push(" AND ")
                    .push(&v)
                    .push(".res_id = ")
                    .text(id)
                    .push("))");
            }
            Filter::Nothing => {
                self.push("1 = 0");
            }
        }
    }

    /// A date comparison of the row range `[lo, hi)` with the search range `[low, high)`
    /// (R4 §3.1.1.4.1: eq means the search range contains the row's, gt that the row's range
    /// reaches above the search range, and so on).
    fn date(&mut self, lo: &str, hi: &str, prefix: Prefix, low: i64, high: i64) {
        match prefix {
            Prefix::Eq => {
                // `lo <= high` follows (lo <= hi); said, it bounds the index range on lo.
                self.push(lo).push(" >= ").int(low);
                self.push(" AND ").push(lo).push(" <= ").int(high);
                self.push(" AND ").push(hi).push(" <= ").int(high);
            }
            Prefix::Ne => {
                self.push("NOT (").push(lo).push(" >= ").int(low);
                self.push(" AND ").push(hi).push(" <= ").int(high).push(")");
            }
            Prefix::Gt => {
                self.push(hi).push(" > ").int(high);
            }
            Prefix::Lt => {
                self.push(lo).push(" < ").int(low);
            }
            Prefix::Ge => {
                // Either way hi >= low: said first, for the index on hi.
                self.push(hi).push(" >= ").int(low).push(" AND (");
                self.push(hi)
                    .push(" > ")
                    .int(high)
                    .push(" OR (")
                    .push(lo)
                    .push(" >= ")
                    .int(low);
                self.push(" AND ")
                    .push(hi)
                    .push(" <= ")
                    .int(high)
                    .push("))");
            }
            Prefix::Le => {
                // Either way lo <= high: said first, for the index on lo.
                self.push(lo).push(" <= ").int(high).push(" AND (");
                self.push(lo)
                    .push(" < ")
                    .int(low)
                    .push(" OR (")
                    .push(lo)
                    .push(" >= ")
                    .int(low);
                self.push(" AND ")
                    .push(hi)
                    .push(" <= ")
                    .int(high)
                    .push("))");
            }
            Prefix::Sa => {
                self.push(lo).push(" >= ").int(high);
            }
            Prefix::Eb => {
                self.push(hi).push(" <= ").int(low);
            }
            Prefix::Ap => {
                // Approximately: overlapping the search range widened by a tenth of its
                // distance from now (at least a day), as HAPI does.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                let gap = ((now - low).abs() / 10).max(86_400_000);
                self.push(lo).push(" < ").int(high.saturating_add(gap));
                self.push(" AND ")
                    .push(hi)
                    .push(" > ")
                    .int(low.saturating_sub(gap));
            }
        }
    }

    fn number(&mut self, col: &str, prefix: Prefix, value: f64, low: f64, high: f64) {
        match prefix {
            Prefix::Eq => {
                self.push(col)
                    .push(" >= ")
                    .float(low)
                    .push(" AND ")
                    .push(col)
                    .push(" < ")
                    .float(high);
            }
            Prefix::Ne => {
                self.push("NOT (").push(col).push(" >= ").float(low);
                self.push(" AND ")
                    .push(col)
                    .push(" < ")
                    .float(high)
                    .push(")");
            }
            Prefix::Gt | Prefix::Sa => {
                self.push(col).push(" > ").float(value);
            }
            Prefix::Lt | Prefix::Eb => {
                self.push(col).push(" < ").float(value);
            }
            Prefix::Ge => {
                self.push(col).push(" >= ").float(value);
            }
            Prefix::Le => {
                self.push(col).push(" <= ").float(value);
            }
            Prefix::Ap => {
                // Within 10% of the value (R4 recommends 10%).
                let d = (value * 0.1).abs();
                self.push(col).push(" >= ").float(value - d);
                self.push(" AND ").push(col).push(" <= ").float(value + d);
            }
        }
    }

    /// A quantity condition on the given value, unit system and unit code columns.
    fn quantity(&mut self, c: &Cond, value_col: &str, system_col: &str, code_col: &str) {
        let Cond::Quantity {
            prefix,
            value,
            low,
            high,
            system,
            code,
        } = c
        else {
            self.push("1 = 0");
            return;
        };
        self.push("(");
        self.number(value_col, *prefix, *value, *low, *high);
        self.push(")");
        if let Some(s) = system {
            self.push(" AND ").push(system_col).push(" = ").text(s);
        }
        if let Some(c) = code {
            self.push(" AND ").push(code_col).push(" = ").text(c);
        }
    }

    fn cond(&mut self, x: &str, c: &Cond) {
        let col = |c: &str| format!("{x}.{c}");
        match c {
            Cond::Token { system, code } => {
                let mut and = false;
                if let Some(code) = code {
                    self.push(&col("code")).push(" = ").text(code);
                    and = true;
                }
                if let Some(system) = system {
                    if and {
                        self.push(" AND ");
                    }
                    self.push(&col("system")).push(" = ").text(system);
                    and = true;
                }
                if !and {
                    self.push("1 = 1");
                }
            }
            Cond::StringStarts(p) => {
                self.push(&col("norm")).push(" >= ").text(p);
                let mut upper = p.clone();
                upper.push(char::MAX);
                self.push(" AND ")
                    .push(&col("norm"))
                    .push(" < ")
                    .text(&upper);
            }
            Cond::StringExact { norm, exact } => {
                self.push(&col("norm")).push(" = ").text(norm);
                self.push(" AND ")
                    .push(&col("exact"))
                    .push(" = ")
                    .text(exact);
            }
            Cond::StringContains(p) => {
                let escaped = p
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_");
                self.push(&col("norm"))
                    .push(" LIKE ")
                    .text(&format!("%{escaped}%"))
                    .push(" ESCAPE '\\'");
            }
            Cond::Reference(targets) => {
                if let [one] = targets.as_slice() {
                    self.push(&col("target")).push(" = ").text(one);
                } else {
                    self.push(&col("target")).push(" IN ");
                    self.list(targets);
                }
            }
            Cond::Date { prefix, low, high } => {
                self.date(&col("low"), &col("high"), *prefix, *low, *high);
            }
            Cond::Number {
                prefix,
                value,
                low,
                high,
            } => self.number(&col("value"), *prefix, *value, *low, *high),
            Cond::Quantity { .. } => self.quantity(c, &col("value"), &col("system"), &col("code")),
            Cond::UriEq(u) => {
                self.push(&col("uri")).push(" = ").text(u);
            }
            Cond::UriBelow(u) => {
                let mut upper = u.clone();
                upper.push(char::MAX);
                self.push(&col("uri")).push(" >= ").text(u);
                self.push(" AND ")
                    .push(&col("uri"))
                    .push(" < ")
                    .text(&upper);
            }
            Cond::UriAbove(list) => {
                self.push(&col("uri")).push(" IN ");
                self.list(list);
            }
            Cond::Composite {
                system1,
                code1,
                second,
            } => {
                self.push(&col("code1")).push(" = ").text(code1);
                if let Some(s) = system1 {
                    self.push(" AND ").push(&col("system1")).push(" = ").text(s);
                }
                self.push(" AND ");
                match &**second {
                    Cond::Token { system, code } => {
                        self.push(&col("value2"))
                            .push(" IS NULL AND ")
                            .push(&col("low2"));
                        self.push(" IS NULL");
                        if let Some(code) = code {
                            self.push(" AND ")
                                .push(&col("code2"))
                                .push(" = ")
                                .text(code);
                        }
                        if let Some(s) = system {
                            self.push(" AND ").push(&col("system2")).push(" = ").text(s);
                        }
                    }
                    Cond::StringStarts(p) => {
                        let mut upper = p.clone();
                        upper.push(char::MAX);
                        self.push(&col("code2")).push(" >= ").text(p);
                        self.push(" AND ")
                            .push(&col("code2"))
                            .push(" < ")
                            .text(&upper);
                    }
                    Cond::Reference(targets) => {
                        self.push(&col("code2")).push(" IN ");
                        self.list(targets);
                    }
                    Cond::Date { prefix, low, high } => {
                        self.date(&col("low2"), &col("high2"), *prefix, *low, *high);
                    }
                    q @ Cond::Quantity { .. } => {
                        self.quantity(q, &col("value2"), &col("system2"), &col("code2"))
                    }
                    _ => {
                        self.push("1 = 0");
                    }
                }
            }
        }
    }

    /// The SQL of a sort key for the row aliased `a`.
    fn sort_expr(&mut self, a: &str, key: &SortKey) {
        match &key.by {
            SortBy::Id => {
                self.push(a).push(".res_id");
            }
            SortBy::LastUpdated => {
                self.push(a).push(".last_updated");
            }
            SortBy::Index { table, param } => {
                let col = match table {
                    IndexTable::String => "norm",
                    IndexTable::Token => "code",
                    IndexTable::Reference => "target",
                    IndexTable::Date => "low",
                    IndexTable::Number | IndexTable::Quantity => "value",
                    IndexTable::Uri => "uri",
                    IndexTable::Composite => "code1",
                };
                let agg = if key.desc { "MAX" } else { "MIN" };
                let x = self.alias("x");
                self.push("(SELECT ")
                    .push(agg)
                    .push("(")
                    .push(&x)
                    .push(".")
                    .push(col)
                    .push(") FROM ")
                    .push(table.name())
                    .push(" ")
                    .push(&x)
                    .push(" WHERE ")
                    .push(&x)
                    .push(".resource_pk = ")
                    .push(a)
                    .push(".pk AND ")
                    .push(&x)
                    .push(".param = ")
                    .text(param)
                    .push(")");
            }
        }
    }

    fn sort_value(&mut self, key: &SortKey, v: &SortValue) {
        match (key.by.kind(), v) {
            (Kind::Int, SortValue::Int(i)) => {
                self.int(*i);
            }
            (Kind::Float, SortValue::Float(f)) => {
                self.float(*f);
            }
            (Kind::Float, SortValue::Int(i)) => {
                self.float(*i as f64);
            }
            (_, SortValue::Text(t)) => {
                self.text(t);
            }
            _ => {
                self.push("NULL");
            }
        }
    }

    /// Rows after (or, `before`, before) `(values, pk)` in the order of `keys`, missing values
    /// last in both directions, on the outer query's columns `q.s0, q.s1, ...`: ties on the
    /// first keys, then strictly beyond on the next one, or ties on all and the key beyond.
    fn keyset(&mut self, keys: &[SortKey], values: &[SortValue], pk: i64, before: bool) {
        self.push("(");
        for i in 0..=keys.len() {
            if i > 0 {
                self.push(" OR ");
            }
            self.push("(1 = 1");
            for (j, v) in values.iter().enumerate().take(i) {
                if *v == SortValue::Null {
                    self.push(&format!(" AND q.s{j} IS NULL"));
                } else {
                    self.push(&format!(" AND q.s{j} = "));
                    self.sort_value(&keys[j], v);
                }
            }
            if i == keys.len() {
                self.push(if before {
                    " AND q.pk < "
                } else {
                    " AND q.pk > "
                })
                .int(pk);
                self.push(")");
                continue;
            }
            match (values.get(i), before) {
                (None, _) => {
                    self.push(" AND 1 = 0");
                }
                // Nothing comes after a missing value; every value comes before one.
                (Some(SortValue::Null), false) => {
                    self.push(" AND 1 = 0");
                }
                (Some(SortValue::Null), true) => {
                    self.push(&format!(" AND q.s{i} IS NOT NULL"));
                }
                (Some(v), _) => {
                    let op = if keys[i].desc != before { "<" } else { ">" };
                    self.push(&format!(" AND (q.s{i} {op} "));
                    self.sort_value(&keys[i], v);
                    if before {
                        self.push(")");
                    } else {
                        // After a value come the missing ones too.
                        self.push(&format!(" OR q.s{i} IS NULL)"));
                    }
                }
            }
            self.push(")");
        }
        self.push(")");
    }

    fn load<U>(self, db: &mut Db) -> Result<Vec<U>, StoreError>
    where
        U: QueryableByName<diesel::pg::Pg> + QueryableByName<diesel::sqlite::Sqlite> + 'static,
    {
        let q = Statement {
            cache: shapes::admit(&self.text, &self.binds),
            sql: self,
        };
        Ok(match db {
            Db::Postgres(c) => q.load::<U>(c)?,
            Db::Sqlite(c) => q.load::<U>(c)?,
        })
    }
}

/// A search statement as diesel runs it: the text with each engine's placeholders, the values
/// bound, and a prepared statement kept on the connection when its shape is admitted (see
/// [`shapes`]). A search's text depends on the structure of its criteria only (every value is
/// bound), so the same kind of search reuses one statement: PostgreSQL neither parses nor, once
/// it settles on a generic plan, plans it again, and SQLite does not prepare it again.
struct Statement {
    sql: Sql,
    cache: bool,
}

impl<DB> diesel::query_builder::QueryFragment<DB> for Statement
where
    DB: diesel::backend::Backend
        + diesel::sql_types::HasSqlType<Text>
        + diesel::sql_types::HasSqlType<BigInt>
        + diesel::sql_types::HasSqlType<Double>,
    String: diesel::serialize::ToSql<Text, DB>,
    i64: diesel::serialize::ToSql<BigInt, DB>,
    f64: diesel::serialize::ToSql<Double, DB>,
{
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, DB>,
    ) -> diesel::QueryResult<()> {
        if !self.cache {
            out.unsafe_to_cache_prepared();
        }
        let mut from = 0;
        for (at, b) in self.sql.marks.iter().zip(&self.sql.binds) {
            out.push_sql(&self.sql.text[from..*at]);
            match b {
                Bind::Text(s) => out.push_bind_param::<Text, _>(s)?,
                Bind::Int(i) => out.push_bind_param::<BigInt, _>(i)?,
                Bind::Float(f) => out.push_bind_param::<Double, _>(f)?,
            }
            from = *at;
        }
        out.push_sql(&self.sql.text[from..]);
        Ok(())
    }
}

impl diesel::query_builder::QueryId for Statement {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl diesel::query_builder::Query for Statement {
    type SqlType = diesel::sql_types::Untyped;
}

impl<Conn> RunQueryDsl<Conn> for Statement {}

/// Which search shapes may be kept as prepared statements. Every connection keeps a statement
/// per shape it has run, and diesel's cache never lets one go; a client sending ever new
/// combinations of criteria must not be able to fill the server and the database with them.
/// So the first [`shapes::LIMIT`] distinct shapes the process sees are admitted, and any other
/// runs as a one-off statement, as every search did before.
mod shapes {
    use std::collections::HashSet;
    use std::hash::{Hash, Hasher};
    use std::sync::Mutex;

    pub const LIMIT: usize = 512;

    static ADMITTED: Mutex<Option<HashSet<u64>>> = Mutex::new(None);

    pub(super) fn admit(text: &str, binds: &[super::Bind]) -> bool {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut h);
        for b in binds {
            std::mem::discriminant(b).hash(&mut h);
        }
        let key = h.finish();
        let Ok(mut admitted) = ADMITTED.lock() else {
            return false;
        };
        let set = admitted.get_or_insert_with(HashSet::new);
        set.contains(&key) || (set.len() < LIMIT && set.insert(key))
    }
}

/// The live current versions, as [`Found`] rows; callers add conditions.
const SELECT_CURRENT: &str = "SELECT rv.pk, rv.res_type, rv.res_id, rv.version, rv.last_updated, \
     rv.body FROM resource_version rv WHERE rv.is_current AND NOT rv.deleted";

/// The tables a list of conditions touches, in first-seen order.
fn tables_of(conds: &[Cond]) -> Vec<IndexTable> {
    let mut out: Vec<IndexTable> = Vec::new();
    for c in conds {
        let t = c.table();
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

impl Session<'_> {
    /// One page of a search, in primary key order (or reversed, for `before`), or in the
    /// order of its sort keys.
    pub fn search(&mut self, q: &SearchQuery) -> Result<Vec<Found>, StoreError> {
        let filters = merge_ranges(&q.filters);
        if !q.sort.is_empty() {
            return self.search_sorted(q, &filters);
        }
        // Primary keys first, bodies for the page only: sorting whole rows would carry every
        // match's body through the sort.
        let page = Page {
            after: q.after,
            before: q.before,
            limit: q.limit,
            backward: q.before.is_some() && q.after.is_none(),
        };
        let mut sql = Sql::new();
        sql.push(
            "SELECT o.pk, o.res_type, o.res_id, o.version, o.last_updated, o.body \
             FROM resource_version o WHERE o.pk IN (SELECT k.pk FROM (",
        );
        sql.keys(&q.types, &filters, Some(&page));
        // A backward page is the `limit` rows just before `before`, ascending like any other.
        sql.push(") k) ORDER BY o.pk");
        sql.load(self.db_mut())
    }

    fn search_sorted(
        &mut self,
        q: &SearchQuery,
        filters: &[Filter],
    ) -> Result<Vec<Found>, StoreError> {
        let mut sql = Sql::new();
        sql.push(
            "SELECT o.pk, o.res_type, o.res_id, o.version, o.last_updated, o.body FROM \
             (SELECT q.* FROM (SELECT rv.pk",
        );
        for (i, key) in q.sort.iter().enumerate() {
            sql.push(", ");
            sql.sort_expr("rv", key);
            sql.push(&format!(" AS s{i}"));
        }
        sql.push(" FROM resource_version rv WHERE rv.pk IN (SELECT k.pk FROM (");
        sql.keys(&q.types, filters, None);
        sql.push(") k)) q");
        let backward = q.sort_before.is_some() && q.sort_after.is_none();
        if let Some((values, pk)) = &q.sort_after {
            sql.push(" WHERE ");
            sql.keyset(&q.sort, values, *pk, false);
        } else if let Some((values, pk)) = &q.sort_before {
            sql.push(" WHERE ");
            sql.keyset(&q.sort, values, *pk, true);
        }
        // The order of the results, and its reverse (for the rows just before a cursor).
        let mut order = String::new();
        let mut reverse = String::new();
        for (i, key) in q.sort.iter().enumerate() {
            let (dir, back) = if key.desc {
                ("DESC", "ASC")
            } else {
                ("ASC", "DESC")
            };
            order.push_str(&format!("{{}}.s{i} {dir} NULLS LAST, "));
            reverse.push_str(&format!("{{}}.s{i} {back} NULLS FIRST, "));
        }
        order.push_str("{}.pk");
        reverse.push_str("{}.pk DESC");
        let inner = if backward { &reverse } else { &order };
        sql.push(" ORDER BY ").push(&inner.replace("{}", "q"));
        sql.push(" LIMIT ").int(q.limit);
        sql.push(") p JOIN resource_version o ON o.pk = p.pk ORDER BY ")
            .push(&order.replace("{}", "p"));
        sql.load(self.db_mut())
    }

    /// The sort values of one row (for the cursor of the next page).
    pub fn sort_values(&mut self, pk: i64, keys: &[SortKey]) -> Result<Vec<SortValue>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let mut sql = Sql::new();
            sql.push("SELECT ");
            sql.sort_expr("rv", key);
            sql.push(" AS v FROM resource_version rv WHERE rv.pk = ")
                .int(pk);
            let v = match key.by.kind() {
                Kind::Text => sql
                    .load::<TextVal>(self.db_mut())?
                    .pop()
                    .and_then(|r| r.v)
                    .map(SortValue::Text),
                Kind::Int => sql
                    .load::<IntVal>(self.db_mut())?
                    .pop()
                    .and_then(|r| r.v)
                    .map(SortValue::Int),
                Kind::Float => sql
                    .load::<FloatVal>(self.db_mut())?
                    .pop()
                    .and_then(|r| r.v)
                    .map(SortValue::Float),
            };
            out.push(v.unwrap_or(SortValue::Null));
        }
        Ok(out)
    }

    /// How many resources a search matches in all.
    pub fn search_count(&mut self, q: &SearchQuery) -> Result<i64, StoreError> {
        let filters = merge_ranges(&q.filters);
        let mut sql = Sql::new();
        sql.push("SELECT COUNT(*) AS n FROM (");
        sql.keys(&q.types, &filters, None);
        sql.push(") k");
        let rows: Vec<Count> = sql.load(self.db_mut())?;
        Ok(rows.first().map(|c| c.n).unwrap_or(0))
    }

    /// Reference targets of some resources (by primary key) through one parameter, or through
    /// any (`param` None, for `_include=Type:*`).
    pub fn references_from(
        &mut self,
        pks: &[i64],
        param: Option<&str>,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        if pks.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = Sql::new();
        sql.push("SELECT x.resource_pk, x.target FROM ix_reference x WHERE x.resource_pk IN (");
        for (i, pk) in pks.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.int(*pk);
        }
        sql.push(")");
        if let Some(p) = param {
            sql.push(" AND x.param = ").text(p);
        }
        let rows: Vec<Target> = sql.load(self.db_mut())?;
        Ok(rows
            .into_iter()
            .map(|t| (t.resource_pk, t.target))
            .collect())
    }

    /// Current resources of `source_type` that point at any of `targets` through `param` (or
    /// any parameter), at most `limit`.
    pub fn referencing(
        &mut self,
        source_type: &str,
        param: Option<&str>,
        targets: &[String],
        limit: i64,
    ) -> Result<Vec<Found>, StoreError> {
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = Sql::new();
        sql.push(SELECT_CURRENT)
            .push(" AND rv.res_type = ")
            .text(source_type)
            .push(" AND rv.pk IN (SELECT x.resource_pk FROM ix_reference x WHERE x.target IN ");
        sql.list(targets);
        sql.push(" AND x.res_type = ").text(source_type);
        if let Some(p) = param {
            sql.push(" AND x.param = ").text(p);
        }
        sql.push(") ORDER BY rv.pk LIMIT ").int(limit);
        sql.load(self.db_mut())
    }

    /// Live current versions after a primary key, in key order (for `yba reindex`).
    pub fn current_after(&mut self, after: i64, limit: i64) -> Result<Vec<Found>, StoreError> {
        let mut sql = Sql::new();
        sql.push(SELECT_CURRENT)
            .push(" AND rv.pk > ")
            .int(after)
            .push(" ORDER BY rv.pk LIMIT ")
            .int(limit);
        sql.load(self.db_mut())
    }

    /// How many live current versions there are.
    pub fn count_current(&mut self) -> Result<i64, StoreError> {
        let mut sql = Sql::new();
        sql.push(
            "SELECT COUNT(*) AS n FROM resource_version rv WHERE rv.is_current AND NOT rv.deleted",
        );
        let rows: Vec<Count> = sql.load(self.db_mut())?;
        Ok(rows.first().map(|c| c.n).unwrap_or(0))
    }

    /// A fact about the database (`yba_meta`).
    pub fn meta(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        use super::schema::yba_meta;
        Ok(yba_meta::table
            .filter(yba_meta::key.eq(key))
            .select(yba_meta::value)
            .load::<String>(self.db_mut())?
            .into_iter()
            .next())
    }

    /// Records a fact about the database.
    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        use super::schema::yba_meta;
        diesel::delete(yba_meta::table.filter(yba_meta::key.eq(key))).execute(self.db_mut())?;
        diesel::insert_into(yba_meta::table)
            .values((yba_meta::key.eq(key), yba_meta::value.eq(value)))
            .execute(self.db_mut())?;
        Ok(())
    }

    /// Current, live resources by `Type/id`.
    pub fn fetch_targets(&mut self, targets: &[String]) -> Result<Vec<Found>, StoreError> {
        let mut by_type: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        for t in targets {
            if let Some((ty, id)) = t.split_once('/') {
                by_type.entry(ty).or_default().push(id.to_string());
            }
        }
        let mut out = Vec::new();
        for (ty, ids) in by_type {
            let mut sql = Sql::new();
            sql.push(SELECT_CURRENT)
                .push(" AND rv.res_type = ")
                .text(ty)
                .push(" AND rv.res_id IN ");
            sql.list(&ids);
            out.extend(sql.load::<Found>(self.db_mut())?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_so_many_shapes_are_kept_as_prepared_statements() {
        let first = "SELECT 1 /* first */";
        assert!(shapes::admit(first, &[Bind::Int(1)]));
        for i in 0..shapes::LIMIT {
            shapes::admit(&format!("SELECT {i} /* filler */"), &[]);
        }
        // Full: a new shape runs as a one-off; a shape admitted before stays admitted.
        assert!(!shapes::admit("SELECT 2 /* late */", &[]));
        assert!(shapes::admit(first, &[Bind::Int(7)]));
        // The same text with other kinds of values is another shape.
        assert!(!shapes::admit(first, &[Bind::Text("x".into())]));
    }

    #[test]
    fn date_bounds_on_one_parameter_merge_into_one_range() {
        let bound = |prefix, low| Filter::Any {
            param: "date".into(),
            conds: vec![Cond::Date {
                prefix,
                low,
                high: low + 86_400_000,
            }],
        };
        let other = Filter::Any {
            param: "code".into(),
            conds: vec![Cond::Token {
                system: None,
                code: Some("x".into()),
            }],
        };
        let merged = merge_ranges(&[
            bound(Prefix::Ge, 0),
            other.clone(),
            bound(Prefix::Lt, 86_400_000),
        ]);
        assert_eq!(merged.len(), 2);
        assert!(
            matches!(&merged[0], Filter::Range { param, conds } if param == "date" && conds.len() == 2)
        );
        assert_eq!(merged[1], other);
        // One bound alone, or a `ne`, stays as it is.
        assert_eq!(
            merge_ranges(&[bound(Prefix::Ge, 0)]),
            [bound(Prefix::Ge, 0)]
        );
        let ne = [bound(Prefix::Ne, 0), bound(Prefix::Ne, 86_400_000)];
        assert_eq!(merge_ranges(&ne), ne);
    }
}
