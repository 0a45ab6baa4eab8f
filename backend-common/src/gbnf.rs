//! GBNF, llama.cpp's grammar format: literals as the constrained-decoding paths write them,
//! the checks a user's grammar passes before an engine parses it, and a reader of the
//! whole dialect ([`Grammar::parse`]: rules, alternation, groups, `* + ? {m,n}`, character
//! classes with ranges and negation, escapes, comments, token references) that writes it in
//! llguidance's Lark dialect ([`Grammar::to_lark`]) for engines that constrain with it.
use std::collections::HashMap;

/// Deepest nesting of parenthesised groups accepted. llama.cpp's GBNF parser recurses once per
/// level on the calling thread's stack, which a few thousand levels overflow (the process
/// aborts); no real grammar comes near this.
pub const MAX_GROUP_DEPTH: usize = 128;

/// Where a grammar nests groups deeper than [`MAX_GROUP_DEPTH`]: the 1-based line and column
/// of the first `(` over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "groups nested more than {MAX_GROUP_DEPTH} deep at line {line}, column {column}; flatten them into named rules"
)]
pub struct TooDeep {
    /// Line of the `(` that goes over the limit.
    pub line: usize,
    /// Column (in characters) of that `(`.
    pub column: usize,
}

/// Checks that `grammar` nests groups at most [`MAX_GROUP_DEPTH`] deep. Parentheses inside
/// string literals, character classes and comments do not count.
pub fn check_group_depth(grammar: &str) -> Result<(), TooDeep> {
    #[derive(Clone, Copy, PartialEq)]
    enum In {
        Rules,
        Literal,
        Class,
        Comment,
    }
    let mut state = In::Rules;
    let mut escaped = false;
    let mut depth = 0usize;
    let (mut line, mut column) = (1, 0);
    for c in grammar.chars() {
        column += 1;
        if c == '\n' {
            (line, column) = (line + 1, 0);
        }
        if escaped {
            escaped = false;
            continue;
        }
        state = match (state, c) {
            (In::Literal | In::Class, '\\') => {
                escaped = true;
                state
            }
            (In::Literal, '"') | (In::Class, ']') => In::Rules,
            (In::Comment, '\n') => In::Rules,
            (In::Rules, '"') => In::Literal,
            (In::Rules, '[') => In::Class,
            (In::Rules, '#') => In::Comment,
            (In::Rules, '(') => {
                depth += 1;
                if depth > MAX_GROUP_DEPTH {
                    return Err(TooDeep { line, column });
                }
                In::Rules
            }
            (In::Rules, ')') => {
                depth = depth.saturating_sub(1);
                In::Rules
            }
            (state, _) => state,
        };
    }
    Ok(())
}

/// `text` as a GBNF string literal; `None` for empty text (GBNF has no empty literal).
pub fn literal(text: &str) -> Option<String> {
    if text.is_empty() {
        return None;
    }
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    Some(out)
}

/// A GBNF grammar that parsed: its rules in the order they were first named.
#[derive(Debug, Clone, PartialEq)]
pub struct Grammar {
    rules: Vec<Rule>,
    root: usize,
}

/// One rule: its name and its body (`None` until it is defined).
#[derive(Debug, Clone, PartialEq)]
struct Rule {
    name: String,
    body: Option<Alternatives>,
    /// Where the rule is first named, for an error about an undefined rule.
    seen_at: (usize, usize),
}

/// `a | b | ...`; an empty sequence is an empty alternative.
type Alternatives = Vec<Vec<Item>>;

/// One item of a sequence.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    /// A string literal (never empty: `""` parses to no item).
    Literal(String),
    /// A character class: `[a-z]`, `[^"\\]`.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `.`: any character.
    Any,
    /// Another rule, by index.
    Rule(usize),
    /// A parenthesised group.
    Group(Alternatives),
    /// A token named by id or text: `<[128000]>`, `<think>`.
    Token(String),
    /// `x*`, `x+`, `x?`, `x{m}`, `x{m,}`, `x{m,n}`.
    Repeat {
        item: Box<Item>,
        min: u32,
        max: Option<u32>,
    },
}

/// Deepest nesting a grammar may reach through rules naming rules: along any chain of
/// references, each rule counts one plus its own deepest nesting of groups and repetitions,
/// and a cycle counts all its rules. Grammar compilers (llguidance, llama.cpp's left-recursion
/// check) follow such chains by recursion on the stack; a JSON-schema grammar stays in the
/// tens, one with many tools in the hundreds.
pub const MAX_NESTING: usize = 4096;

/// Most repetitions one `{m,n}` may ask for (llama.cpp's own limit).
pub const MAX_REPETITIONS: u32 = 2000;

/// Why a GBNF grammar does not parse, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong there.
    pub message: String,
}

/// A recursive-descent reader of llama.cpp's GBNF dialect.
struct Reader<'a> {
    text: &'a str,
    pos: usize,
    rules: Vec<Rule>,
    /// Index of each rule by name.
    by_name: HashMap<String, usize>,
    depth: usize,
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-'
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.text[self.pos..].chars().nth(n)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn location(&self, at: usize) -> (usize, usize) {
        let before = &self.text[..at];
        let line = before.matches('\n').count() + 1;
        let column = before[before.rfind('\n').map_or(0, |i| i + 1)..]
            .chars()
            .count()
            + 1;
        (line, column)
    }

    fn error_at(&self, at: usize, message: impl Into<String>) -> ParseError {
        let (line, column) = self.location(at);
        ParseError {
            line,
            column,
            message: message.into(),
        }
    }

    fn error(&self, message: impl Into<String>) -> ParseError {
        self.error_at(self.pos, message)
    }

    /// Skips blanks and comments, and newlines where `newlines` (inside groups, between rules).
    fn skip_space(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' => {
                    self.bump();
                }
                '#' => {
                    while self.peek().is_some_and(|c| c != '\n' && c != '\r') {
                        self.bump();
                    }
                }
                '\r' | '\n' if newlines => {
                    self.bump();
                }
                _ => return,
            }
        }
    }

    fn name(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        while self.peek().is_some_and(is_word_char) {
            self.bump();
        }
        if start == self.pos {
            return Err(self.error(format!(
                "expected a rule name (letters, digits and '-'), found {}",
                self.shown()
            )));
        }
        Ok(self.text[start..self.pos].to_string())
    }

    /// What is at the current position, for messages.
    fn shown(&self) -> String {
        match self.peek() {
            None => "the end of the grammar".into(),
            Some('\n' | '\r') => "the end of the line".into(),
            Some(c) => format!("{c:?}"),
        }
    }

    fn rule_index(&mut self, name: &str, at: usize) -> usize {
        if let Some(&i) = self.by_name.get(name) {
            return i;
        }
        self.by_name.insert(name.to_string(), self.rules.len());
        let seen_at = self.location(at);
        self.rules.push(Rule {
            name: name.to_string(),
            body: None,
            seen_at,
        });
        self.rules.len() - 1
    }

    fn rule(&mut self) -> Result<(), ParseError> {
        let at = self.pos;
        let name = self.name()?;
        let index = self.rule_index(&name, at);
        self.skip_space(false);
        if !self.text[self.pos..].starts_with("::=") {
            return Err(self.error(format!(
                "expected `::=` after rule name `{name}`, found {}",
                self.shown()
            )));
        }
        self.pos += 3;
        self.skip_space(true);
        let body = self.alternatives(false)?;
        match self.peek() {
            None | Some('\n' | '\r') => {}
            Some(')') => return Err(self.error("unbalanced `)`: no group is open here")),
            Some(_) => {
                return Err(self.error(format!(
                    "expected the end of the line or another alternative, found {}",
                    self.shown()
                )));
            }
        }
        // As in llama.cpp, a rule defined twice keeps its last definition.
        self.rules[index].body = Some(body);
        self.skip_space(true);
        Ok(())
    }

    fn alternatives(&mut self, nested: bool) -> Result<Alternatives, ParseError> {
        let mut alternatives = vec![self.sequence(nested)?];
        while self.peek() == Some('|') {
            self.bump();
            self.skip_space(true);
            alternatives.push(self.sequence(nested)?);
        }
        Ok(alternatives)
    }

    fn sequence(&mut self, nested: bool) -> Result<Vec<Item>, ParseError> {
        let mut items: Vec<Item> = Vec::new();
        // Whether the last item may take a repetition (`""` parses to nothing, yet `""*` is
        // as valid as in llama.cpp).
        let mut last_repeatable = false;
        loop {
            let at = self.pos;
            let Some(c) = self.peek() else { break };
            match c {
                '"' => {
                    self.bump();
                    let mut text = String::new();
                    loop {
                        match self.peek() {
                            None | Some('\n' | '\r') => {
                                return Err(self.error_at(at, "unterminated string literal"));
                            }
                            Some('"') => {
                                self.bump();
                                break;
                            }
                            Some(_) => text.push(self.char_in_literal()?),
                        }
                    }
                    if text.is_empty() {
                        items.push(Item::Group(vec![Vec::new()]));
                    } else {
                        items.push(Item::Literal(text));
                    }
                }
                '[' => {
                    self.bump();
                    let negated = self.peek() == Some('^');
                    if negated {
                        self.bump();
                    }
                    let mut ranges = Vec::new();
                    loop {
                        match self.peek() {
                            None | Some('\n' | '\r') => {
                                return Err(self.error_at(at, "unterminated character class"));
                            }
                            Some(']') => {
                                self.bump();
                                break;
                            }
                            Some(_) => {
                                let range_at = self.pos;
                                let low = self.char_in_literal()?;
                                let high = if self.peek() == Some('-')
                                    && self.peek_at(1).is_some_and(|c| c != ']')
                                {
                                    self.bump();
                                    self.char_in_literal()?
                                } else {
                                    low
                                };
                                if high < low {
                                    return Err(self.error_at(
                                        range_at,
                                        format!(
                                            "character range {low:?}-{high:?} ends before it starts"
                                        ),
                                    ));
                                }
                                ranges.push((low, high));
                            }
                        }
                    }
                    items.push(Item::Class { negated, ranges });
                }
                '.' => {
                    self.bump();
                    items.push(Item::Any);
                }
                '<' => {
                    self.bump();
                    let start = self.pos;
                    while self.peek().is_some_and(|c| c != '>' && c != '\n') {
                        self.bump();
                    }
                    if self.peek() != Some('>') || self.pos == start {
                        return Err(self.error_at(at, "a token reference is `<[id]>` or `<text>`"));
                    }
                    let token = self.text[start..self.pos].to_string();
                    self.bump();
                    items.push(Item::Token(token));
                }
                '!' => {
                    return Err(self.error(
                        "`!<token>` (any token but one) is not supported; list what may come instead",
                    ));
                }
                '(' => {
                    self.bump();
                    self.depth += 1;
                    if self.depth > MAX_GROUP_DEPTH {
                        return Err(self.error_at(
                            at,
                            format!("groups nested more than {MAX_GROUP_DEPTH} deep; flatten them into named rules"),
                        ));
                    }
                    self.skip_space(true);
                    let inner = self.alternatives(true)?;
                    if self.peek() != Some(')') {
                        return Err(self.error(format!(
                            "expected `)` to close the group opened at {}, found {}",
                            {
                                let (l, c) = self.location(at);
                                format!("line {l}, column {c}")
                            },
                            self.shown()
                        )));
                    }
                    self.bump();
                    self.depth -= 1;
                    items.push(Item::Group(inner));
                }
                '*' | '+' | '?' | '{' => {
                    if !last_repeatable {
                        return Err(self.error(format!("`{c}` has no item before it to repeat")));
                    }
                    let (min, max) = self.repetition()?;
                    let item = items.pop().expect("a repeatable item precedes");
                    items.push(Item::Repeat {
                        item: Box::new(item),
                        min,
                        max,
                    });
                    last_repeatable = false;
                    self.skip_space(nested);
                    continue;
                }
                c if is_word_char(c) => {
                    let name = self.name()?;
                    let index = self.rule_index(&name, at);
                    items.push(Item::Rule(index));
                }
                _ => break,
            }
            last_repeatable = true;
            self.skip_space(nested);
        }
        Ok(items)
    }

    /// `*`, `+`, `?` or `{m}`, `{m,}`, `{,n}`, `{m,n}`: (min, max).
    fn repetition(&mut self) -> Result<(u32, Option<u32>), ParseError> {
        let at = self.pos;
        match self.bump() {
            Some('*') => return Ok((0, None)),
            Some('+') => return Ok((1, None)),
            Some('?') => return Ok((0, Some(1))),
            _ => {}
        }
        self.skip_space(true);
        let min = self.number()?.unwrap_or(0);
        self.skip_space(true);
        let max = if self.peek() == Some(',') {
            self.bump();
            self.skip_space(true);
            self.number()?
        } else {
            Some(min)
        };
        self.skip_space(true);
        if self.bump() != Some('}') {
            return Err(self.error_at(at, "a repetition is `{m}`, `{m,}`, `{,n}` or `{m,n}`"));
        }
        if max.is_some_and(|max| max < min) {
            return Err(self.error_at(
                at,
                format!(
                    "repetition {{{min},{}}} has its maximum below its minimum",
                    max.unwrap_or(0)
                ),
            ));
        }
        if min.max(max.unwrap_or(0)) > MAX_REPETITIONS {
            return Err(self.error_at(
                at,
                format!(
                    "more than {MAX_REPETITIONS} repetitions; use `*` or `+` for unbounded ones"
                ),
            ));
        }
        Ok((min, max))
    }

    fn number(&mut self) -> Result<Option<u32>, ParseError> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.bump();
        }
        if start == self.pos {
            return Ok(None);
        }
        self.text[start..self.pos]
            .parse()
            .map(Some)
            .map_err(|_| self.error_at(start, format!("more than {MAX_REPETITIONS} repetitions")))
    }

    /// One character of a literal or class, escapes decoded.
    fn char_in_literal(&mut self) -> Result<char, ParseError> {
        let at = self.pos;
        let c = self.bump().expect("caller checked a character follows");
        if c != '\\' {
            return Ok(c);
        }
        let digits = match self.bump() {
            Some('x') => 2,
            Some('u') => 4,
            Some('U') => 8,
            Some('t') => return Ok('\t'),
            Some('r') => return Ok('\r'),
            Some('n') => return Ok('\n'),
            Some(c @ ('\\' | '"' | '[' | ']' | '-')) => return Ok(c),
            other => {
                return Err(self.error_at(
                    at,
                    format!(
                        "unknown escape `\\{}`; GBNF knows \\x.. \\u.... \\U........ \\t \\r \\n \\\\ \\\" \\[ \\] \\-",
                        other.map(String::from).unwrap_or_default()
                    ),
                ));
            }
        };
        let start = self.pos;
        for _ in 0..digits {
            if !self.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                return Err(self.error_at(at, format!("escape needs {digits} hex digits")));
            }
            self.bump();
        }
        u32::from_str_radix(&self.text[start..self.pos], 16)
            .ok()
            .and_then(char::from_u32)
            .ok_or_else(|| self.error_at(at, "escape is not a Unicode scalar value"))
    }
}

impl Grammar {
    /// Parses `text`; the start rule is `root`.
    pub fn parse(text: &str) -> Result<Grammar, ParseError> {
        let mut reader = Reader {
            text,
            pos: 0,
            rules: Vec::new(),
            by_name: HashMap::new(),
            depth: 0,
        };
        reader.skip_space(true);
        while reader.peek().is_some() {
            reader.rule()?;
        }
        if let Some(rule) = reader.rules.iter().find(|r| r.body.is_none()) {
            let (line, column) = rule.seen_at;
            return Err(ParseError {
                line,
                column,
                message: format!("rule `{}` is used but never defined", rule.name),
            });
        }
        let root = reader
            .by_name
            .get("root")
            .copied()
            .ok_or_else(|| ParseError {
                line: 1,
                column: 1,
                message: "the grammar has no `root` rule (where the output starts)".into(),
            })?;
        let grammar = Grammar {
            rules: reader.rules,
            root,
        };
        grammar.check_rule_depth()?;
        Ok(grammar)
    }

    /// Refuses grammars nested deeper than [`MAX_NESTING`] through their rules.
    fn check_rule_depth(&self) -> Result<(), ParseError> {
        fn nesting(item: &Item) -> usize {
            match item {
                Item::Group(alternatives) => {
                    1 + alternatives
                        .iter()
                        .flatten()
                        .map(nesting)
                        .max()
                        .unwrap_or(0)
                }
                Item::Repeat { item, .. } => 1 + nesting(item),
                _ => 0,
            }
        }
        let weight: Vec<usize> = self
            .rules
            .iter()
            .map(|r| {
                1 + r
                    .body
                    .iter()
                    .flatten()
                    .flatten()
                    .map(nesting)
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let refs = self.references();
        let components = strongly_connected(&refs);
        let mut component_of = vec![0; refs.len()];
        for (c, members) in components.iter().enumerate() {
            members.iter().for_each(|&r| component_of[r] = c);
        }
        // Components come after every component they reach, so one pass in order sees each
        // one's successors decided.
        let mut depth = vec![0usize; components.len()];
        for (c, members) in components.iter().enumerate() {
            let below = members
                .iter()
                .flat_map(|&r| &refs[r])
                .map(|&q| component_of[q])
                .filter(|&d| d != c)
                .map(|d| depth[d])
                .max()
                .unwrap_or(0);
            depth[c] = below + members.iter().map(|&r| weight[r]).sum::<usize>();
            if depth[c] > MAX_NESTING {
                let rule = &self.rules[members[0]];
                let (line, column) = rule.seen_at;
                return Err(ParseError {
                    line,
                    column,
                    message: format!(
                        "rule `{}` nests more than {MAX_NESTING} levels deep through the rules it names (each rule counts one plus its nested groups, a cycle all its rules); flatten it",
                        rule.name
                    ),
                });
            }
        }
        Ok(())
    }
}

/// How the Lark form names and shapes each rule.
struct LarkNames {
    /// Lark's name of each rule: UPPERCASE for a terminal, lowercase for a rule.
    names: Vec<String>,
    /// Rules compiled to terminals (one regular expression each).
    terminal: Vec<bool>,
}

impl Grammar {
    /// Indices of the rules each rule's body names.
    fn references(&self) -> Vec<Vec<usize>> {
        fn collect(item: &Item, out: &mut Vec<usize>) {
            match item {
                Item::Rule(r) => out.push(*r),
                Item::Group(alternatives) => {
                    alternatives.iter().flatten().for_each(|i| collect(i, out));
                }
                Item::Repeat { item, .. } => collect(item, out),
                _ => {}
            }
        }
        self.rules
            .iter()
            .map(|rule| {
                let mut out = Vec::new();
                rule.body
                    .iter()
                    .flatten()
                    .flatten()
                    .for_each(|i| collect(i, &mut out));
                out
            })
            .collect()
    }

    /// Whether each rule's body names a token (`<...>`), which a terminal cannot hold.
    fn names_token(&self) -> Vec<bool> {
        fn has(item: &Item) -> bool {
            match item {
                Item::Token(_) => true,
                Item::Group(alternatives) => alternatives.iter().flatten().any(has),
                Item::Repeat { item, .. } => has(item),
                _ => false,
            }
        }
        self.rules
            .iter()
            .map(|r| r.body.iter().flatten().flatten().any(has))
            .collect()
    }

    /// Which rules become terminals: those no recursion passes through and that name no
    /// token, with every rule they name the same. A terminal is matched as one regular
    /// expression, exactly; llguidance's Earley parser handles the rest.
    fn lark_names(&self) -> LarkNames {
        let refs = self.references();
        let n = self.rules.len();
        let token = self.names_token();
        let mut terminal = vec![false; n];
        // Components come out of Tarjan's walk after every component they reach, so the
        // rules a rule names are decided before it.
        for component in strongly_connected(&refs) {
            let recursive = component.len() > 1 || refs[component[0]].contains(&component[0]);
            if recursive {
                continue;
            }
            let r = component[0];
            terminal[r] = !token[r] && refs[r].iter().all(|&q| terminal[q]);
        }
        let names = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let base: String = rule
                    .name
                    .chars()
                    .map(|c| if c == '-' { '_' } else { c })
                    .collect();
                if terminal[i] {
                    format!("T{i}_{}", base.to_ascii_uppercase())
                } else {
                    format!("r{i}_{}", base.to_ascii_lowercase())
                }
            })
            .collect();
        LarkNames { names, terminal }
    }

    /// The grammar in llguidance's Lark dialect, starting at `root`. Rules that no recursion
    /// passes through become terminals (one regular expression each, matched exactly);
    /// recursive ones stay Earley rules, whose terminals llguidance matches longest-first.
    pub fn to_lark(&self) -> String {
        let lark = self.lark_names();
        // Terminals are written before the rules that use them, and a terminal that can
        // only match the empty string is left out (its uses become nothing).
        let mut bodies: Vec<Option<Option<String>>> = vec![None; self.rules.len()];
        let refs = self.references();
        let order = self.terminal_order(&lark, &refs);
        for &r in &order {
            let body = self.rules[r]
                .body
                .as_ref()
                .expect("parse checked every rule is defined");
            let emitted = emit_alternatives(body, &lark, &bodies).map(|e| e.0);
            bodies[r] = Some(emitted);
        }
        let mut out = String::new();
        let root = match &bodies[self.root] {
            Some(None) => "\"\"".to_string(),
            _ => lark.names[self.root].clone(),
        };
        out.push_str(&format!("start: {root}\n"));
        for &r in &order {
            if let Some(Some(body)) = &bodies[r] {
                out.push_str(&format!("{}: {body}\n", lark.names[r]));
            }
        }
        for (r, rule) in self.rules.iter().enumerate() {
            if lark.terminal[r] {
                continue;
            }
            let body = rule
                .body
                .as_ref()
                .expect("parse checked every rule is defined");
            let emitted = emit_alternatives(body, &lark, &bodies).map(|e| e.0);
            out.push_str(&format!(
                "{}: {}\n",
                lark.names[r],
                emitted.unwrap_or_else(|| "\"\"".into())
            ));
        }
        out
    }

    /// The terminal rules, each after every terminal it names (Kahn's order; no cycles, as
    /// terminals are not recursive).
    fn terminal_order(&self, lark: &LarkNames, refs: &[Vec<usize>]) -> Vec<usize> {
        let n = self.rules.len();
        let mut pending: Vec<usize> = (0..n)
            .map(|r| if lark.terminal[r] { refs[r].len() } else { 0 })
            .collect();
        let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
        for r in (0..n).filter(|&r| lark.terminal[r]) {
            for &q in &refs[r] {
                users[q].push(r);
            }
        }
        let mut ready: Vec<usize> = (0..n)
            .filter(|&r| lark.terminal[r] && pending[r] == 0)
            .collect();
        let mut order = Vec::new();
        while let Some(r) = ready.pop() {
            order.push(r);
            for &u in &users[r] {
                pending[u] -= 1;
                if pending[u] == 0 {
                    ready.push(u);
                }
            }
        }
        order
    }
}

/// The strongly connected components of the graph `edges` (node -> nodes it points to), each
/// after every component it reaches (Tarjan's algorithm, without recursion: a grammar may
/// chain many thousands of rules).
fn strongly_connected(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    const UNSEEN: usize = usize::MAX;
    let n = edges.len();
    let (mut index, mut low) = (vec![UNSEEN; n], vec![0; n]);
    let mut on_stack = vec![false; n];
    let (mut stack, mut components) = (Vec::new(), Vec::new());
    let mut next = 0;
    for root in 0..n {
        if index[root] != UNSEEN {
            continue;
        }
        // (node, how many of its edges were followed)
        let mut walk = vec![(root, 0)];
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut followed)) = walk.last_mut() {
            if let Some(&w) = edges[v].get(*followed) {
                *followed += 1;
                if index[w] == UNSEEN {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    walk.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            walk.pop();
            if let Some(&(parent, _)) = walk.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut component = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                components.push(component);
            }
        }
    }
    components
}

/// Lark text, and whether a postfix operator (`*`, `{m,n}`) may follow it as it is.
type Emitted = (String, bool);

/// `alternatives` in Lark; `None` when they match only the empty string. `bodies` holds the
/// emitted terminals so far (`Some(None)`: a terminal that matches only "").
fn emit_alternatives(
    alternatives: &Alternatives,
    lark: &LarkNames,
    bodies: &[Option<Option<String>>],
) -> Option<Emitted> {
    let mut parts: Vec<Emitted> = Vec::new();
    let mut empty = false;
    for sequence in alternatives {
        let mut items: Vec<Emitted> = sequence
            .iter()
            .filter_map(|i| emit_item(i, lark, bodies))
            .collect();
        match items.len() {
            0 => empty = true,
            1 => parts.push(items.remove(0)),
            _ => parts.push((
                items.into_iter().map(|i| i.0).collect::<Vec<_>>().join(" "),
                false,
            )),
        }
    }
    parts.dedup();
    let joined = || {
        parts
            .iter()
            .map(|p| p.0.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    };
    match (parts.len(), empty) {
        (0, _) => None,
        (1, false) => Some(parts.remove(0)),
        (_, false) => Some((joined(), false)),
        (_, true) => Some((format!("({})?", joined()), false)),
    }
}

fn emit_item(item: &Item, lark: &LarkNames, bodies: &[Option<Option<String>>]) -> Option<Emitted> {
    let atom = |text: String| Some((text, true));
    match item {
        Item::Literal(text) => atom(serde_json::to_string(text).expect("a string serialises")),
        Item::Class { negated, ranges } => atom(class_regex(*negated, ranges)),
        Item::Any => atom("/(?s:.)/".into()),
        Item::Token(token) => atom(format!("<{token}>")),
        Item::Rule(r) => match bodies[*r] {
            Some(None) => None,
            _ => atom(lark.names[*r].clone()),
        },
        Item::Group(alternatives) => {
            let (inner, postfixable) = emit_alternatives(alternatives, lark, bodies)?;
            atom(if postfixable {
                inner
            } else {
                format!("({inner})")
            })
        }
        Item::Repeat { item, min, max } => {
            let (inner, postfixable) = emit_item(item, lark, bodies)?;
            let inner = if postfixable {
                inner
            } else {
                format!("({inner})")
            };
            let text = match (min, max) {
                (0, Some(0)) => return None,
                (0, None) => format!("{inner}*"),
                (1, None) => format!("{inner}+"),
                (0, Some(1)) => format!("{inner}?"),
                (m, None) => format!("{inner}{{{m},}}"),
                (m, Some(x)) if m == x => format!("{inner}{{{m}}}"),
                (m, Some(x)) => format!("{inner}{{{m},{x}}}"),
            };
            Some((text, false))
        }
    }
}

/// A character class as a Lark regular expression; every character that is not a letter or
/// digit is written as `\x{..}`, so no escaping rule of either syntax applies.
fn class_regex(negated: bool, ranges: &[(char, char)]) -> String {
    if ranges.is_empty() {
        // `[]` matches nothing and `[^]` anything.
        return if negated {
            "/(?s:.)/".into()
        } else {
            "/[^\\x{0}-\\x{10FFFF}]/".into()
        };
    }
    let one = |c: char| {
        if c.is_ascii_alphanumeric() {
            c.to_string()
        } else {
            format!("\\x{{{:x}}}", c as u32)
        }
    };
    let mut out = String::from("/[");
    if negated {
        out.push('^');
    }
    for &(low, high) in ranges {
        out.push_str(&one(low));
        if high != low {
            out.push('-');
            out.push_str(&one(high));
        }
    }
    out.push_str("]/");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_depth_is_bounded_and_located() {
        let nested = |n: usize| format!("root ::= {}\"a\"{}", "(".repeat(n), ")".repeat(n));
        assert_eq!(check_group_depth(&nested(MAX_GROUP_DEPTH)), Ok(()));
        assert_eq!(
            check_group_depth(&format!("# a comment\n{}", nested(5000))),
            Err(TooDeep {
                line: 2,
                column: "root ::= ".len() + MAX_GROUP_DEPTH + 1
            })
        );
        // Parentheses in literals, classes and comments are text, not groups.
        let text = "(".repeat(MAX_GROUP_DEPTH + 1);
        for quiet in [
            format!("root ::= \"{text}\\\"{text}\""),
            format!("root ::= [{text}\\]{text}]"),
            format!("root ::= \"a\" # {text}"),
        ] {
            assert_eq!(check_group_depth(&quiet), Ok(()), "{quiet}");
        }
    }

    #[test]
    fn literals_are_escaped() {
        assert_eq!(literal(""), None);
        assert_eq!(
            literal("<tool_call>\n\"a\\b\"").as_deref(),
            Some(r#""<tool_call>\n\"a\\b\"""#)
        );
    }

    /// LocalAI's core writes grammars of this shape for a JSON schema.
    const JSON_GRAMMAR: &str = r#"# a person
root ::= "{" space name-kv "," space age-kv "}" space
name-kv ::= "\"name\"" space ":" space string
age-kv ::= "\"age\"" space ":" space [0-9]{1,3}
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" space
space ::= | " " | "\n" [ \t]{0,20}
"#;

    #[test]
    fn regular_rules_become_terminals() {
        let grammar = Grammar::parse(JSON_GRAMMAR).unwrap();
        let lark = grammar.to_lark();
        assert!(lark.starts_with("start: T0_ROOT\n"), "{lark}");
        assert!(lark.contains("T4_STRING: \"\\\"\" (/[^\\x{22}\\x{5c}\\x{7f}\\x{0}-\\x{1f}]/ | \"\\\\\" (/[\\x{22}\\x{5c}\\x{2f}bfnrt]/ | \"u\" /[0-9a-fA-F]/{4}))* \"\\\"\" T1_SPACE\n"), "{lark}");
        assert!(
            lark.contains("T1_SPACE: (\" \" | \"\\n\" /[\\x{20}\\x{9}]/{0,20})?\n"),
            "{lark}"
        );
        assert!(!lark.contains("\nr"), "no rule is recursive: {lark}");
    }

    #[test]
    fn recursion_stays_in_rules() {
        let grammar = Grammar::parse(
            "root ::= value\nvalue ::= \"[\" (value (\",\" value)*)? \"]\" | num\nnum ::= [0-9]+",
        )
        .unwrap();
        assert_eq!(
            grammar.to_lark(),
            "start: r0_root\nT2_NUM: /[0-9]/+\nr0_root: r1_value\nr1_value: \"[\" (r1_value (\",\" r1_value)*)? \"]\" | T2_NUM\n"
        );
    }

    #[test]
    fn empty_literals_and_alternatives_are_nothing() {
        let grammar = Grammar::parse("root ::= \"\" | \"a\" e\ne ::= \"\"\"\"*").unwrap();
        assert_eq!(grammar.to_lark(), "start: T0_ROOT\nT0_ROOT: (\"a\")?\n");
        let only_empty = Grammar::parse("root ::= \"\"").unwrap();
        assert_eq!(only_empty.to_lark(), "start: \"\"\n");
    }

    /// `n` rules, each naming the next; the last names root when `closed`.
    fn chain(n: usize, closed: bool) -> String {
        let mut text = String::from("root ::= r0\n");
        for i in 0..n {
            text.push_str(&format!("r{i} ::= \"x\" r{}\n", i + 1));
        }
        let back = if closed { " | root" } else { "" };
        text.push_str(&format!("r{n} ::= \"end\"{back}\n"));
        text
    }

    #[test]
    fn nesting_through_rules_is_bounded() {
        let lark = Grammar::parse(&chain(MAX_NESTING - 2, false))
            .unwrap()
            .to_lark();
        assert!(lark.starts_with("start: T0_ROOT\n"), "{}", &lark[..100]);
        let e = Grammar::parse(&chain(MAX_NESTING, false)).unwrap_err();
        assert!(e.message.contains("more than 4096 levels"), "{e}");
        // A cycle counts all its rules; a wide grammar only its deepest path.
        assert!(Grammar::parse(&chain(MAX_NESTING, true)).is_err());
        let mut wide = String::from("root ::= (");
        wide.push_str(
            &(0..20_000)
                .map(|i| format!("r{i}"))
                .collect::<Vec<_>>()
                .join(" | "),
        );
        wide.push_str(")\n");
        for i in 0..20_000 {
            wide.push_str(&format!("r{i} ::= ((\"a\")+)?\n"));
        }
        let lark = Grammar::parse(&wide).unwrap().to_lark();
        assert!(lark.starts_with("start: T0_ROOT\n"), "{}", &lark[..100]);
    }

    #[test]
    fn tokens_and_any_character() {
        let grammar = Grammar::parse("root ::= <think> .* </think> [^]").unwrap();
        assert_eq!(
            grammar.to_lark(),
            "start: r0_root\nr0_root: <think> /(?s:.)/* </think> /(?s:.)/\n"
        );
    }

    #[test]
    fn parse_errors_say_what_and_where() {
        let cases = [
            ("root ::= \"a", 1, 10, "unterminated string"),
            ("root ::= [a-", 1, 10, "unterminated character class"),
            ("root ::= item", 1, 10, "`item` is used but never defined"),
            ("item ::= \"a\"", 1, 1, "no `root` rule"),
            ("root = \"a\"", 1, 6, "expected `::=`"),
            ("root ::= \"\\q\"", 1, 11, "unknown escape"),
            ("root ::= \"a\"{3,1}", 1, 13, "maximum below its minimum"),
            ("root ::= \"a\"{5000}", 1, 13, "more than 2000"),
            ("root ::= *", 1, 10, "no item before it"),
            ("root ::= (\"a\"\n", 2, 1, "expected `)`"),
            ("root ::= \"a\")", 1, 13, "unbalanced"),
            ("root ::= [z-a]", 1, 11, "ends before it starts"),
            ("\n\nroot ::= \"\\x4\"", 3, 11, "2 hex digits"),
        ];
        for (text, line, column, message) in cases {
            let e = Grammar::parse(text).unwrap_err();
            assert_eq!((e.line, e.column), (line, column), "{text:?}: {e}");
            assert!(e.message.contains(message), "{text:?}: {e}");
        }
    }

    #[test]
    fn newlines_end_rules_except_in_groups() {
        let grammar =
            Grammar::parse("root ::= (\n  \"a\" # why\n  | \"b\"\n)\n\nx ::= \"c\"\n").unwrap();
        assert_eq!(grammar.rules.len(), 2);
        assert_eq!(
            grammar.to_lark(),
            "start: T0_ROOT\nT1_X: \"c\"\nT0_ROOT: (\"a\" | \"b\")\n"
        );
    }
}
