//! Constrained decoding with llguidance: a [`GrammarCompiler`] per loaded model (the token
//! trie of its vocabulary), and a [`SequenceGrammar`] per constrained request that says,
//! at each step, which tokens may come next.
//!
//! The constraint itself (GBNF, JSON schema, Lark, tool calls, triggers) is read by
//! `backend_common::constraint`; here it is only compiled and run. A lazy constraint costs
//! nothing until its trigger appears in the output: then the text from the trigger on is
//! fed to a fresh matcher and every later token is masked.
use std::sync::Arc;

use backend_common::constraint::{ConstraintStart, OutputConstraint, Triggers};
use backend_common::engine::EngineError;
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};

use crate::tokenizer::ModelTokenizer;

/// Stack of the thread that compiles a grammar: [`backend_common::gbnf::MAX_NESTING`] levels
/// at the 3-4 KiB each llguidance's compiler was measured to take, with room to spare.
const COMPILE_STACK: usize = 64 << 20;

/// The model's vocabulary as llguidance sees it.
struct VocabEnv {
    trie: TokTrie,
    tokenizer: Arc<ModelTokenizer>,
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        // Text goes through the model's own tokenizer; bytes that are not UTF-8 (a piece
        // cut inside a character) through the trie, greedily.
        match std::str::from_utf8(s) {
            Ok(text) => self
                .tokenizer
                .encode(text, false)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// Compiles constraints for one loaded model.
pub struct GrammarCompiler {
    factory: ParserFactory,
}

impl GrammarCompiler {
    /// A compiler over `tokenizer`'s vocabulary, for logits of `vocab` entries (a model's
    /// output layer may be wider than its tokenizer).
    pub fn new(tokenizer: Arc<ModelTokenizer>, vocab: usize) -> Result<Self, EngineError> {
        let eog: Vec<u32> = tokenizer.eog().collect();
        let words: Vec<Vec<u8>> = (0..vocab as u32)
            .map(|id| {
                let piece = tokenizer.piece(id);
                if tokenizer.is_control(id) {
                    // A control token is never text: grammars name it as `<|im_end|>`.
                    let mut word = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    word.extend_from_slice(piece);
                    word
                } else {
                    piece.to_vec()
                }
            })
            .collect();
        let first_eog = eog.iter().min().copied().unwrap_or(u32::MAX);
        let info = TokRxInfo::new(vocab as u32, first_eog);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&eog);
        let env: TokEnv = Arc::new(VocabEnv { trie, tokenizer });
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| EngineError::Internal(format!("cannot set up llguidance: {e}")))?;
        factory.quiet();
        Ok(GrammarCompiler { factory })
    }

    /// The grammar state of a new sequence under `constraint`; an invalid grammar is
    /// INVALID_ARGUMENT, before any token.
    pub fn compile(&self, constraint: &OutputConstraint) -> Result<SequenceGrammar, EngineError> {
        let grammar = TopLevelGrammar::from_lark(constraint.lark.clone());
        // llguidance's compiler recurses along chains of rules, a few KiB a level: it runs
        // on a thread whose stack holds the deepest nesting the GBNF reader lets through
        // (a reservation: only the pages used are committed).
        let compiled = std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("grammar".into())
                .stack_size(COMPILE_STACK)
                .spawn_scoped(scope, || self.factory.create_parser(grammar))
                .map_err(|e| {
                    EngineError::Internal(format!("cannot start the grammar thread: {e}"))
                })?
                .join()
                .map_err(|_| {
                    EngineError::Internal("llguidance panicked compiling a grammar".into())
                })
        })?;
        let parser = compiled.map_err(|e| {
            EngineError::InvalidArgument(format!("Grammar: llguidance cannot compile it: {e}"))
        })?;
        let matcher = Matcher::new(Ok(parser));
        let state = match &constraint.start {
            ConstraintStart::Immediately => State::Active(matcher),
            ConstraintStart::Triggered(triggers) => State::Waiting {
                triggers: triggers.clone(),
                text: Vec::new(),
                matcher,
            },
        };
        Ok(SequenceGrammar {
            state,
            env: self.factory.tok_env().clone(),
        })
    }
}

/// Where a sequence's constraint stands.
enum State {
    /// Lazy, and no trigger yet: the output is free; `text` is what it holds so far.
    Waiting {
        triggers: Triggers,
        text: Vec<u8>,
        matcher: Matcher,
    },
    /// Every next token is masked.
    Active(Matcher),
}

/// The constraint of one running sequence.
pub struct SequenceGrammar {
    state: State,
    env: TokEnv,
}

/// Why a constrained sequence cannot go on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GrammarStop {
    /// The grammar is complete: only an end-of-generation token may follow.
    #[error("the grammar is complete")]
    Complete,
    /// The grammar reached a state no token continues (or llguidance failed).
    #[error("the output cannot continue under the grammar: {0}")]
    Stuck(String),
}

impl SequenceGrammar {
    /// Whether the next token is masked (false while a lazy constraint waits).
    pub fn is_active(&self) -> bool {
        matches!(self.state, State::Active(_))
    }

    /// The tokens allowed next; `None` while the constraint waits for its trigger.
    pub fn mask(&mut self) -> Option<Result<SimpleVob, String>> {
        let State::Active(matcher) = &mut self.state else {
            return None;
        };
        Some(matcher.compute_mask_or_eos().map_err(|e| e.to_string()))
    }

    /// Records `token` (whose bytes are `piece`) as generated. A lazy constraint whose
    /// trigger this token completes starts here: the output from the trigger on is fed to
    /// the grammar, which must accept it.
    pub fn accept(&mut self, token: u32, piece: &[u8]) -> Result<(), GrammarStop> {
        match &mut self.state {
            State::Active(matcher) => matcher
                .consume_token(token)
                .map_err(|e| GrammarStop::Stuck(e.to_string())),
            State::Waiting {
                triggers,
                text,
                matcher,
            } => {
                text.extend_from_slice(piece);
                let Some(start) = triggers.find(text) else {
                    return Ok(());
                };
                let tokens = self.env.tokenize_bytes(&text[start..]);
                let mut matcher = matcher.clone();
                matcher
                    .consume_tokens(&tokens)
                    .map_err(|e| GrammarStop::Stuck(e.to_string()))?;
                self.state = State::Active(matcher);
                Ok(())
            }
        }
    }

    /// Why nothing in `mask` could be sampled: the grammar is complete, or stuck.
    pub fn stop_reason(&mut self) -> GrammarStop {
        let State::Active(matcher) = &mut self.state else {
            return GrammarStop::Stuck("the grammar has not started".into());
        };
        if matcher.is_accepting().unwrap_or(false) {
            return GrammarStop::Complete;
        }
        GrammarStop::Stuck(
            matcher
                .get_error()
                .unwrap_or_else(|| "no token is allowed next".into()),
        )
    }
}

/// Sets every logit `mask` does not allow to minus infinity.
pub fn apply_mask(mask: &SimpleVob, logits: &mut [f32]) {
    for (id, logit) in logits.iter_mut().enumerate() {
        if !mask.is_allowed(id as u32) {
            *logit = f32::NEG_INFINITY;
        }
    }
}

#[cfg(test)]
mod tests {
    //! GBNF as llguidance runs it, over a vocabulary of single bytes, so every string is
    //! fed character by character and each step's mask is checked.
    use super::*;
    use backend_common::gbnf;

    struct Bytes(TokTrie);

    impl TokenizerEnv for Bytes {
        fn tok_trie(&self) -> &TokTrie {
            &self.0
        }

        fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
            self.0.greedy_tokenize(s)
        }
    }

    /// Byte `b` is token `b`; 255 is the end of text.
    fn factory() -> ParserFactory {
        let mut words: Vec<Vec<u8>> = (0..255u8).map(|b| vec![b]).collect();
        words.push(vec![TokTrie::SPECIAL_TOKEN_MARKER, b'e']);
        let trie = TokTrie::from(&TokRxInfo::new(256, 255), &words);
        let env: TokEnv = Arc::new(Bytes(trie));
        let mut factory = ParserFactory::new_simple(&env).unwrap();
        factory.quiet();
        factory
    }

    /// Whether `grammar` (GBNF) accepts exactly `text`: every byte allowed by the mask before
    /// it, and the end allowed after the last.
    fn accepts(grammar: &str, text: &str) -> bool {
        let lark = gbnf::Grammar::parse(grammar).unwrap().to_lark();
        let parser = factory()
            .create_parser(TopLevelGrammar::from_lark(lark.clone()))
            .unwrap_or_else(|e| panic!("{lark}: {e}"));
        runs_through(Matcher::new(Ok(parser)), text)
    }

    /// Whether `matcher` takes `text` byte by byte (each allowed by the mask before it) and
    /// then allows the end.
    fn runs_through(mut matcher: Matcher, text: &str) -> bool {
        for b in text.bytes() {
            let mask = matcher.compute_mask_or_eos().unwrap();
            if !mask.is_allowed(u32::from(b)) {
                return false;
            }
            matcher.consume_token(u32::from(b)).unwrap();
        }
        matcher.compute_mask_or_eos().unwrap().is_allowed(255)
    }

    fn check(grammar: &str, good: &[&str], bad: &[&str]) {
        for text in good {
            assert!(accepts(grammar, text), "{grammar:?} must accept {text:?}");
        }
        for text in bad {
            assert!(!accepts(grammar, text), "{grammar:?} must refuse {text:?}");
        }
    }

    #[test]
    fn literals_classes_and_repetitions() {
        check(
            r#"root ::= "id-" [a-z0-9]{2,4} ("." [^ \n.]+)? "!"*"#,
            &["id-ab", "id-a1b2", "id-xy.Zé!!", "id-xy!"],
            &["id-a", "id-abcde", "ID-ab", "id-ab.", "id-ab. x"],
        );
        check(
            r#"root ::= [\x41-\x43]+ "\u00e9" "\t""#,
            &["ABCé\t"],
            &["Dé\t", "A\t"],
        );
        check(r#"root ::= . .? "x""#, &["\nx", "abx"], &["x", "abcx"]);
    }

    #[test]
    fn alternatives_and_empty_ones() {
        let grammar =
            "root ::= greeting name\ngreeting ::= | \"hi\" | \"hello\"\nname ::= \" bob\" | \"\"";
        check(grammar, &["hi bob", "hello", "", " bob"], &["hi bo", "hey"]);
    }

    #[test]
    fn recursion_through_nullable_terminals() {
        // `space` can be empty and sits between recursive parts: the terminals around it
        // must still let both "()" and "( ( ) )" through.
        let grammar = "root ::= \"(\" space (root space)* \")\"\nspace ::= \" \"?";
        check(
            grammar,
            &["()", "(())", "( ( ) )", "(()())"],
            &["(", "( )(", "(  )"],
        );
    }

    #[test]
    fn json_values_nest() {
        let grammar = r#"root ::= value
value ::= object | array | string | number | "true" | "false" | "null"
object ::= "{" ws ( string ws ":" ws value ws ( "," ws string ws ":" ws value ws )* )? "}"
array ::= "[" ws ( value ws ( "," ws value ws )* )? "]"
string ::= "\"" ( [^"\\\x00-\x1f] | "\\" ["\\/bfnrt] )* "\""
number ::= "-"? [0-9]+ ("." [0-9]+)?
ws ::= [ \t\n]*"#;
        check(
            grammar,
            &[
                r#"{"a": [1, 2.5, {"b": null}], "c\"d": "e"}"#,
                "[]",
                "-3",
                r#"[ "x" , [ true ] ]"#,
            ],
            &["{a: 1}", "[1,]", r#""\q""#, "01.", "{"],
        );
    }

    /// Compiles `grammar` as [`GrammarCompiler::compile`] does, on a thread of
    /// [`COMPILE_STACK`], and runs it on one with the stack of a tokio blocking thread (2 MiB),
    /// as the engine thread's are.
    fn accepts_on_small_stack(grammar: String, text: String) -> bool {
        let lark = gbnf::Grammar::parse(&grammar).unwrap().to_lark();
        let parser = std::thread::Builder::new()
            .stack_size(COMPILE_STACK)
            .spawn(move || {
                factory()
                    .create_parser(TopLevelGrammar::from_lark(lark))
                    .unwrap()
            })
            .unwrap()
            .join()
            .unwrap();
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || runs_through(Matcher::new(Ok(parser)), &text))
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn the_deepest_grammars_the_reader_accepts_compile_and_run() {
        let n = gbnf::MAX_NESTING - 2;
        let mut open = String::from("root ::= r0\n");
        for i in 0..n {
            open.push_str(&format!("r{i} ::= \"x\" r{}\n", i + 1));
        }
        open.push_str(&format!("r{n} ::= \"end\"\n"));
        let text = format!("{}end", "x".repeat(n));
        assert!(accepts_on_small_stack(open.clone(), text.clone()));
        // As deep, closed into one cycle of rules led by rule references.
        let many = gbnf::MAX_NESTING - 2;
        let mut cycle = String::from("root ::= r0 \"!\"\n");
        for i in 0..many {
            cycle.push_str(&format!("r{i} ::= r{} \"x\"\n", i + 1));
        }
        cycle.push_str(&format!("r{many} ::= \"end\" | \"(\" root \")\"\n"));
        let text = format!("end{}!", "x".repeat(many));
        assert!(accepts_on_small_stack(cycle, text));
    }
}
