//! Reads what a stored expression tree (`pg_node_tree` text: view and rule actions, column
//! defaults) evaluates and reads. pg_depend is not enough: it omits pinned objects (built-in
//! functions such as `now()`, system catalogs) and nodes without an object at all (SQL value
//! functions such as CURRENT_TIMESTAMP, I/O coercions), so the tree itself is scanned.
//! Pure: no I/O.

use std::collections::BTreeSet;

use super::types::Oid;

/// Everything of interest found in one or more trees.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct NodeRefs {
    /// Functions called: `:funcid`, `:opfuncid`, `:aggfnoid`, `:winfnoid`, `:hashfuncid`, ...
    pub functions: BTreeSet<Oid>,
    /// Operators used (their functions are looked up): `:opno`, `:opnos`, `:sortop`, `:eqop`.
    pub operators: BTreeSet<Oid>,
    /// Types mentioned (`:vartype`, `:consttype`, `:resulttype`, ...): for I/O coercions,
    /// whose input/output functions never appear as function OIDs.
    pub types: BTreeSet<Oid>,
    /// Relations in range tables (`:relid`).
    pub relations: BTreeSet<Oid>,
    /// CURRENT_TIMESTAMP, CURRENT_USER and friends (stable).
    pub value_function: bool,
    /// A `CoerceViaIO` node.
    pub io_coercion: bool,
    /// `nextval` through an identity/serial expression node (volatile).
    pub next_value: bool,
    /// TABLESAMPLE (results vary between executions).
    pub tablesample: bool,
    /// FOR UPDATE/SHARE inside the tree.
    pub row_marks: bool,
}

impl NodeRefs {
    /// Scans one tree and adds what it finds.
    pub(crate) fn scan(&mut self, tree: &str) {
        let tokens = tokenize(tree);
        let mut i = 0;
        while let Some(token) = tokens.get(i) {
            i += 1;
            match token {
                Token::Node(name) => match *name {
                    "SQLVALUEFUNCTION" => self.value_function = true,
                    "COERCEVIAIO" => self.io_coercion = true,
                    "NEXTVALUEEXPR" => self.next_value = true,
                    "TABLESAMPLECLAUSE" => self.tablesample = true,
                    "ROWMARKCLAUSE" => self.row_marks = true,
                    _ => {}
                },
                Token::Key(key) => {
                    let Some(set) = self.set_for(key) else {
                        continue;
                    };
                    match tokens.get(i) {
                        Some(Token::Word(word)) => {
                            if let Some(oid) = parse_oid(word) {
                                set.insert(oid);
                            }
                        }
                        // An OID list: `(o 96 97)`.
                        Some(Token::Open) => {
                            let mut j = i + 1;
                            while let Some(Token::Word(word)) = tokens.get(j) {
                                if let Some(oid) = parse_oid(word) {
                                    set.insert(oid);
                                }
                                j += 1;
                            }
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    }

    fn set_for(&mut self, key: &str) -> Option<&mut BTreeSet<Oid>> {
        if key.ends_with("funcid") || key.ends_with("fnoid") {
            Some(&mut self.functions)
        } else if matches!(key, "opno" | "opnos" | "sortop" | "eqop") {
            Some(&mut self.operators)
        } else if key == "relid" {
            Some(&mut self.relations)
        } else if key.ends_with("type") || key.ends_with("typeid") {
            Some(&mut self.types)
        } else {
            None
        }
    }
}

/// OID 0 means "none" in node trees.
fn parse_oid(word: &str) -> Option<Oid> {
    word.parse::<Oid>().ok().filter(|oid| *oid != 0)
}

#[derive(Debug, PartialEq, Eq)]
enum Token<'a> {
    /// `{NAME`
    Node(&'a str),
    /// `:name`
    Key(&'a str),
    /// A bare value (number, word, escaped token).
    Word(&'a str),
    Open,
    Close,
}

/// Splits node-tree text into tokens. Quoted strings (`"..."`) are skipped whole and
/// backslash escapes are honoured, so names and string contents never look like nodes.
fn tokenize(text: &str) -> Vec<Token<'_>> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'{' => {
                let start = i + 1;
                i = scan_word(bytes, start);
                if let Some(name) = text.get(start..i) {
                    out.push(Token::Node(name));
                }
            }
            b':' => {
                let start = i + 1;
                i = scan_word(bytes, start);
                if let Some(name) = text.get(start..i) {
                    out.push(Token::Key(name));
                }
            }
            b'(' => {
                out.push(Token::Open);
                i += 1;
            }
            b')' => {
                out.push(Token::Close);
                i += 1;
            }
            b'"' => {
                i += 1;
                while let Some(&c) = bytes.get(i) {
                    i += if c == b'\\' { 2 } else { 1 };
                    if c == b'"' {
                        break;
                    }
                }
                out.push(Token::Word(""));
            }
            b'}' | b'[' | b']' => i += 1,
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                let start = i;
                i = scan_word(bytes, start).max(start + 1);
                out.push(Token::Word(text.get(start..i).unwrap_or("")));
            }
        }
    }
    out
}

/// The end of a word: up to whitespace or a structural character, skipping escapes.
fn scan_word(bytes: &[u8], mut i: usize) -> usize {
    while let Some(&c) = bytes.get(i) {
        match c {
            b'\\' => i += 2,
            b'{' | b'}' | b'(' | b')' | b':' | b'"' | b'[' | b']' => break,
            c if c.is_ascii_whitespace() => break,
            _ => i += 1,
        }
    }
    i.min(bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Abridged from a PostgreSQL 15 view: now(), CURRENT_TIMESTAMP, a timestamptz::text
    // coercion, `a = 1`, `a IN (1, 2)`, count(*) over pg_class.
    const VIEW: &str = r#"({QUERY :commandType 1 :rtable ({RANGETBLENTRY :alias <> :eref {ALIAS :aliasname t :colnames ("a" "b")} :rtekind 0 :relid 16384 :relkind r} {RANGETBLENTRY :eref {ALIAS :aliasname pg_class :colnames ("oid")} :relid 1259 :relkind r}) :jointree {FROMEXPR :quals {OPEXPR :opno 96 :opfuncid 65 :opresulttype 16 :args ({VAR :varno 3 :vartype 23} {CONST :consttype 23 :constvalue 4 [ 1 0 0 0 0 0 0 0 ]})} {SCALARARRAYOPEXPR :opno 96 :opfuncid 65 :hashfuncid 0}} :targetList ({TARGETENTRY :expr {FUNCEXPR :funcid 1299 :funcresulttype 1184 :args <>}} {TARGETENTRY :expr {SQLVALUEFUNCTION :op 3 :type 1184 :typmod -1}} {TARGETENTRY :expr {COERCEVIAIO :arg {VAR :varno 3 :vartype 1184} :resulttype 25}} {TARGETENTRY :expr {AGGREF :aggfnoid 2803 :aggtype 20 :aggtranstype 0}}) :rowMarks <>})"#;

    #[test]
    fn finds_functions_operators_types_relations_and_flags() {
        let mut refs = NodeRefs::default();
        refs.scan(VIEW);
        assert_eq!(refs.functions, BTreeSet::from([65, 1299, 2803]));
        assert_eq!(refs.operators, BTreeSet::from([96]));
        assert_eq!(refs.relations, BTreeSet::from([16384, 1259]));
        assert!(refs.types.contains(&1184) && refs.types.contains(&25));
        assert!(refs.types.contains(&23) && refs.types.contains(&20));
        assert!(refs.value_function && refs.io_coercion);
        assert!(!refs.next_value && !refs.tablesample && !refs.row_marks);
    }

    #[test]
    fn strings_and_escapes_never_look_like_nodes() {
        let mut refs = NodeRefs::default();
        refs.scan(r#"({ALIAS :aliasname a\ \{SQLVALUEFUNCTION\ \:funcid\ 5 :colnames ("{FUNCEXPR :funcid 7" "x\"y :relid 9")})"#);
        assert_eq!(refs, NodeRefs::default());
    }

    #[test]
    fn oid_lists_and_flag_nodes() {
        let mut refs = NodeRefs::default();
        refs.scan("({ROWCOMPAREEXPR :rctype 1 :opnos (o 97 521) :inputcollids (o 0 0)} {NEXTVALUEEXPR :seqid 5 :typeId 20} {TABLESAMPLECLAUSE :tsmhandler 3313} {ROWMARKCLAUSE :rti 1})");
        assert_eq!(refs.operators, BTreeSet::from([97, 521]));
        assert!(refs.next_value && refs.tablesample && refs.row_marks);
        // `rctype` is an enum, not a type OID, but a bogus small OID only costs a lookup.
        assert!(refs.functions.is_empty());
    }
}
