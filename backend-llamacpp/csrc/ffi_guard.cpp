// C++ exceptions stopped at the edge between llama.cpp and Rust.
//
// llama.cpp's C API is C++ inside, and a few of its entry points let an exception out (a
// grammar that rejects the sampled token, a failed buffer reservation while decoding, a
// tokenizer regex that fails). An exception that reaches Rust aborts the process, and every
// user loses the model. The linker sends our calls of those entry points here
// (`-Wl,--wrap=NAME`, see build.rs): each catches what the real function throws, keeps its
// message for the Rust side (`backend_llamacpp_take_exception`) and returns a value that
// means failure to llama-cpp-2.
#include <cstring>
#include <exception>
#include <string>

#include "llama.h"

namespace {

// The message of the last exception caught on this thread; empty when none.
thread_local std::string caught;
// How many guarded calls this thread is inside: ld wraps calls inside llama.cpp too, and
// only the outermost may catch (an inner one would hand llama.cpp a value it never expects).
thread_local int depth = 0;

template <typename Call, typename Result>
Result guarded(Call call, Result on_exception) {
    if (depth > 0) {
        return call();
    }
    ++depth;
    // What take_exception reports is about the last guarded call only.
    caught.clear();
    try {
        Result result = call();
        --depth;
        return result;
    } catch (const std::exception & e) {
        --depth;
        caught = e.what();
        if (caught.empty()) {
            caught = "a C++ exception without a message";
        }
    } catch (...) {
        --depth;
        caught = "a C++ exception that is not a std::exception";
    }
    return on_exception;
}

}  // namespace

extern "C" {

llama_token __real_llama_sampler_sample(llama_sampler * smpl, llama_context * ctx, int32_t idx);
int32_t __real_llama_decode(llama_context * ctx, llama_batch batch);
int32_t __real_llama_tokenize(const llama_vocab * vocab, const char * text, int32_t text_len,
                              llama_token * tokens, int32_t n_tokens_max, bool add_special,
                              bool parse_special);
int32_t __real_llama_token_to_piece(const llama_vocab * vocab, llama_token token, char * buf,
                                    int32_t length, int32_t lstrip, bool special);

// On an exception: LLAMA_TOKEN_NULL, a token no vocabulary has.
llama_token __wrap_llama_sampler_sample(llama_sampler * smpl, llama_context * ctx, int32_t idx) {
    return guarded([&] { return __real_llama_sampler_sample(smpl, ctx, idx); }, LLAMA_TOKEN_NULL);
}

// On an exception: -100 (llama.h: "< -1: error").
int32_t __wrap_llama_decode(llama_context * ctx, llama_batch batch) {
    return guarded([&] { return __real_llama_decode(ctx, batch); }, int32_t{-100});
}

// On an exception: 0 tokens (a negative count would make llama-cpp-2 retry with that size).
int32_t __wrap_llama_tokenize(const llama_vocab * vocab, const char * text, int32_t text_len,
                              llama_token * tokens, int32_t n_tokens_max, bool add_special,
                              bool parse_special) {
    return guarded(
        [&] {
            return __real_llama_tokenize(vocab, text, text_len, tokens, n_tokens_max, add_special,
                                         parse_special);
        },
        int32_t{0});
}

// On an exception: an empty piece (for the same reason as tokenize).
int32_t __wrap_llama_token_to_piece(const llama_vocab * vocab, llama_token token, char * buf,
                                    int32_t length, int32_t lstrip, bool special) {
    return guarded(
        [&] { return __real_llama_token_to_piece(vocab, token, buf, length, lstrip, special); },
        int32_t{0});
}

// Copies (at most `len` bytes of) the message of the exception last caught on this thread
// into `buf` and forgets it; returns the message's whole length, 0 when none was caught.
size_t backend_llamacpp_take_exception(char * buf, size_t len) {
    size_t whole = caught.size();
    std::memcpy(buf, caught.data(), whole < len ? whole : len);
    caught.clear();
    return whole;
}

}  // extern "C"
