//! Errors of the chat-template module: each says what was wrong and what to send instead.

use std::path::PathBuf;

/// Everything that can go wrong while loading or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A message's `tool_calls` is not a JSON array of tool-call objects.
    #[error(
        "message {message}: tool_calls is not a JSON array of tool calls ({reason}); send \
         [{{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{{\"name\":\"f\",\"arguments\":\"{{}}\"}}}}]"
    )]
    InvalidToolCalls {
        /// Position of the message in the request.
        message: usize,
        /// What the JSON decoder or the shape check said.
        reason: String,
    },
    /// A tool call's `function.arguments` string is not valid JSON.
    #[error(
        "message {message}, tool call {call}: function.arguments is not valid JSON ({reason}); \
         send the arguments as a JSON-encoded object string such as \"{{\\\"city\\\": \\\"Paris\\\"}}\""
    )]
    InvalidToolArguments {
        /// Position of the message in the request.
        message: usize,
        /// Position of the tool call in the message's `tool_calls`.
        call: usize,
        /// What the JSON decoder said.
        reason: String,
    },
    /// The request's `Tools` string is not a JSON array of tool definitions.
    #[error(
        "tools is not a JSON array of tool definitions ({reason}); send \
         [{{\"type\":\"function\",\"function\":{{\"name\":\"f\",\"parameters\":{{}}}}}}]"
    )]
    InvalidTools {
        /// What the JSON decoder or the shape check said.
        reason: String,
    },
    /// `Metadata["chat_template_kwargs"]` is not a JSON object.
    #[error(
        "Metadata chat_template_kwargs is not a JSON object ({reason}); send one such as {{\"enable_thinking\": false}}"
    )]
    InvalidTemplateKwargs {
        /// What the JSON decoder or the shape check said.
        reason: String,
    },
    /// The request has no messages to render (transformers refuses these too).
    #[error("cannot apply a chat template to an empty conversation; send at least one message")]
    EmptyConversation,
    /// The model has no chat template, but the request needs one.
    #[error(
        "{origin} has no chat template; set one in the model config or send a plain prompt \
         instead of messages"
    )]
    NoChatTemplate {
        /// Where the template was looked for (a folder, a GGUF file, ...).
        origin: String,
    },
    /// The model has several named templates and none called "default".
    #[error(
        "the model has several chat templates ({}) and none is named \"default\"",
        names.join(", ")
    )]
    NoDefaultTemplate {
        /// The names of the templates the model has.
        names: Vec<String>,
    },
    /// A model file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `tokenizer_config.json` (or a sibling file) has an unexpected shape.
    #[error("{}: {reason}", path.display())]
    InvalidConfig {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A template does not parse.
    #[error("chat template {name:?} does not compile: {source}")]
    Syntax {
        /// The template's name ("default" for a single template).
        name: String,
        /// The parser's error.
        #[source]
        source: minijinja::Error,
    },
    /// The template called `raise_exception(message)`, as templates do to reject a conversation.
    #[error("the chat template rejected the conversation: {message}")]
    Raised {
        /// The message the template passed to `raise_exception`.
        message: String,
    },
    /// Rendering failed for another reason (undefined attribute, type error, ...).
    #[error("rendering the chat template failed: {source}")]
    Render {
        /// The engine's error.
        #[source]
        source: minijinja::Error,
    },
}
