//! A GGUF file's header, read without its weights: the metadata a worker needs before it
//! commits to a load (the model's shape, for memory estimates) and the tensor table, checked
//! against the file's length so that a truncated download is refused while the loaded model
//! still serves.
use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::Path;

/// Why a file is not a readable GGUF.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be read.
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    /// The file does not start with GGUF's magic.
    #[error("not a GGUF file (no GGUF magic at its start)")]
    NotGguf,
    /// The header is malformed.
    #[error("malformed GGUF header: {0}")]
    Malformed(String),
    /// The file ends before its last tensor.
    #[error(
        "truncated: its tensors need {needed} bytes but the file has {actual}; download it again"
    )]
    Truncated {
        /// Bytes the header's tensor table needs.
        needed: u64,
        /// Bytes the file has.
        actual: u64,
    },
}

/// A metadata value; arrays are skipped (only their length is kept).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Any integer type.
    Int(i128),
    /// `f32` or `f64`.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(String),
    /// An array of this many elements.
    Array(u64),
}

/// What a GGUF header says.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    /// Metadata by key.
    pub metadata: HashMap<String, MetaValue>,
    /// Number of tensors.
    pub tensor_count: u64,
}

impl GgufHeader {
    /// An integer metadata value.
    pub fn int(&self, key: &str) -> Option<u64> {
        match self.metadata.get(key)? {
            MetaValue::Int(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }

    /// A string metadata value.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.metadata.get(key)? {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.str("general.architecture")
    }

    /// An integer of the architecture's own namespace (`{arch}.{key}`).
    pub fn arch_int(&self, key: &str) -> Option<u64> {
        self.int(&format!("{}.{key}", self.architecture()?))
    }

    /// KV cache elements per token position over all layers, keys and values apart, when
    /// the header says enough to work them out.
    pub fn kv_elements_per_token(&self) -> Option<(u64, u64)> {
        let layers = self.arch_int("block_count")?;
        let heads = self.arch_int("attention.head_count")?.max(1);
        let kv_heads = self.arch_int("attention.head_count_kv").unwrap_or(heads);
        let head_dim = self.arch_int("embedding_length")? / heads;
        let key = self.arch_int("attention.key_length").unwrap_or(head_dim);
        let value = self.arch_int("attention.value_length").unwrap_or(head_dim);
        Some((layers * kv_heads * key, layers * kv_heads * value))
    }

    /// Reads the header of the GGUF file at `path` and checks that the file holds every tensor
    /// its table lists.
    pub fn read(path: &Path) -> Result<GgufHeader, GgufError> {
        let file = std::fs::File::open(path)?;
        let actual = file.metadata()?.len();
        let mut reader = Reader {
            inner: BufReader::new(file),
            position: 0,
            length: actual,
        };
        let (header, needed) = reader.header()?;
        if needed > actual {
            return Err(GgufError::Truncated { needed, actual });
        }
        Ok(header)
    }
}

/// Bytes per block and elements per block of ggml's tensor types, by type id; `None` for a
/// type this table does not know (its tensor is then not counted in the length check).
fn block_layout(kind: u32) -> Option<(u64, u64)> {
    Some(match kind {
        0 => (4, 1),      // F32
        1 => (2, 1),      // F16
        2 => (18, 32),    // Q4_0
        3 => (20, 32),    // Q4_1
        6 => (22, 32),    // Q5_0
        7 => (24, 32),    // Q5_1
        8 => (34, 32),    // Q8_0
        9 => (36, 32),    // Q8_1
        10 => (84, 256),  // Q2_K
        11 => (110, 256), // Q3_K
        12 => (144, 256), // Q4_K
        13 => (176, 256), // Q5_K
        14 => (210, 256), // Q6_K
        15 => (292, 256), // Q8_K
        16 => (66, 256),  // IQ2_XXS
        17 => (74, 256),  // IQ2_XS
        18 => (98, 256),  // IQ3_XXS
        19 => (50, 256),  // IQ1_S
        20 => (18, 32),   // IQ4_NL
        21 => (110, 256), // IQ3_S
        22 => (82, 256),  // IQ2_S
        23 => (136, 256), // IQ4_XS
        24 => (1, 1),     // I8
        25 => (2, 1),     // I16
        26 => (4, 1),     // I32
        27 => (8, 1),     // I64
        28 => (8, 1),     // F64
        29 => (56, 256),  // IQ1_M
        30 => (2, 1),     // BF16
        _ => return None,
    })
}

/// Longest string or array length believed; a header claiming more is malformed (and would
/// otherwise make us allocate what it claims).
const MAX_STRING: u64 = 16 << 20;

/// Most tensors or metadata entries believed.
const MAX_ENTRIES: u64 = 1 << 20;

struct Reader<R> {
    inner: R,
    position: u64,
    length: u64,
}

impl<R: Read> Reader<R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut buf = [0u8; N];
        self.inner.read_exact(&mut buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                GgufError::Malformed(format!("the file ends inside its header ({e})"))
            } else {
                GgufError::Io(e)
            }
        })?;
        self.position += N as u64;
        Ok(buf)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn count(&mut self, what: &str, max: u64) -> Result<u64, GgufError> {
        let n = self.u64()?;
        if n > max || n > self.length {
            return Err(GgufError::Malformed(format!(
                "{what} of {n} is not believable"
            )));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let len = self.count("a string length", MAX_STRING)?;
        let mut buf = vec![0u8; len as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| GgufError::Malformed(format!("the file ends inside a string ({e})")))?;
        self.position += len;
        String::from_utf8(buf).map_err(|_| GgufError::Malformed("a string is not UTF-8".into()))
    }

    /// A value of type `kind`; arrays are read through and summarised.
    fn value(&mut self, kind: u32, depth: u32) -> Result<MetaValue, GgufError> {
        Ok(match kind {
            0 => MetaValue::Int(i128::from(self.bytes::<1>()?[0])),
            1 => MetaValue::Int(i128::from(self.bytes::<1>()?[0] as i8)),
            2 => MetaValue::Int(i128::from(u16::from_le_bytes(self.bytes()?))),
            3 => MetaValue::Int(i128::from(i16::from_le_bytes(self.bytes()?))),
            4 => MetaValue::Int(i128::from(self.u32()?)),
            5 => MetaValue::Int(i128::from(i32::from_le_bytes(self.bytes()?))),
            6 => MetaValue::Float(f64::from(f32::from_le_bytes(self.bytes()?))),
            7 => MetaValue::Bool(self.bytes::<1>()?[0] != 0),
            8 => MetaValue::Str(self.string()?),
            9 if depth < 4 => {
                let element = self.u32()?;
                let n = self.count("an array length", self.length)?;
                for _ in 0..n {
                    self.value(element, depth + 1)?;
                }
                MetaValue::Array(n)
            }
            10 => MetaValue::Int(i128::from(self.u64()?)),
            11 => MetaValue::Int(i128::from(i64::from_le_bytes(self.bytes()?))),
            12 => MetaValue::Float(f64::from_le_bytes(self.bytes()?)),
            other => {
                return Err(GgufError::Malformed(format!(
                    "unknown metadata value type {other}"
                )));
            }
        })
    }

    /// The header and the number of bytes the file must have to hold every tensor.
    fn header(&mut self) -> Result<(GgufHeader, u64), GgufError> {
        if &self.bytes::<4>().map_err(|_| GgufError::NotGguf)? != b"GGUF" {
            return Err(GgufError::NotGguf);
        }
        let version = self.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Malformed(format!(
                "GGUF version {version} (this reader knows 2 and 3)"
            )));
        }
        let tensor_count = self.count("a tensor count", MAX_ENTRIES)?;
        let kv_count = self.count("a metadata count", MAX_ENTRIES)?;
        let mut metadata = HashMap::new();
        for _ in 0..kv_count {
            let key = self.string()?;
            let kind = self.u32()?;
            let value = self.value(kind, 0)?;
            metadata.insert(key, value);
        }
        let mut end_of_data = 0u64;
        for _ in 0..tensor_count {
            let name = self.string()?;
            let dims = self.u32()?;
            if dims > 8 {
                return Err(GgufError::Malformed(format!(
                    "tensor `{name}` has {dims} dimensions"
                )));
            }
            let mut elements = 1u64;
            for _ in 0..dims {
                elements = elements.saturating_mul(self.u64()?);
            }
            let kind = self.u32()?;
            let offset = self.u64()?;
            let bytes = block_layout(kind).map_or(0, |(block_bytes, block_elements)| {
                elements
                    .div_ceil(block_elements)
                    .saturating_mul(block_bytes)
            });
            end_of_data = end_of_data.max(offset.saturating_add(bytes));
        }
        let alignment = match metadata.get("general.alignment") {
            Some(MetaValue::Int(a)) if *a > 0 => u64::try_from(*a).unwrap_or(32),
            _ => 32,
        };
        let data_start = self.position.div_ceil(alignment) * alignment;
        let header = GgufHeader {
            metadata,
            tensor_count,
        };
        Ok((header, data_start.saturating_add(end_of_data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF v3 file with the given metadata and one F32 tensor of `elements` values, whose
    /// data is cut to `data_bytes`.
    fn gguf(metadata: &[(&str, u64)], elements: u64, data_bytes: usize) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(1u64.to_le_bytes());
        out.extend((metadata.len() as u64 + 1).to_le_bytes());
        let string = |out: &mut Vec<u8>, s: &str| {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        };
        string(&mut out, "general.architecture");
        out.extend(8u32.to_le_bytes());
        string(&mut out, "llama");
        for (key, value) in metadata {
            string(&mut out, key);
            out.extend(10u32.to_le_bytes());
            out.extend(value.to_le_bytes());
        }
        string(&mut out, "w");
        out.extend(1u32.to_le_bytes());
        out.extend(elements.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(0u64.to_le_bytes());
        out.resize(out.len().div_ceil(32) * 32 + data_bytes, 0);
        out
    }

    fn read(bytes: &[u8]) -> Result<GgufHeader, GgufError> {
        let path = std::env::temp_dir().join(format!(
            "gguf-header-test-{}-{}.gguf",
            std::process::id(),
            bytes.len()
        ));
        std::fs::write(&path, bytes).unwrap();
        let result = GgufHeader::read(&path);
        std::fs::remove_file(&path).unwrap();
        result
    }

    #[test]
    fn whole_file_reads_with_its_shape() {
        let shape = [
            ("llama.block_count", 30),
            ("llama.embedding_length", 576),
            ("llama.attention.head_count", 9),
            ("llama.attention.head_count_kv", 3),
        ];
        let header = read(&gguf(&shape, 16, 64)).unwrap();
        assert_eq!(header.architecture(), Some("llama"));
        assert_eq!(header.tensor_count, 1);
        // 30 layers x 3 KV heads x 64, for keys and for values.
        assert_eq!(
            header.kv_elements_per_token(),
            Some((30 * 3 * 64, 30 * 3 * 64))
        );
    }

    #[test]
    fn truncated_data_and_header_are_refused() {
        let whole = gguf(&[], 16, 64);
        match read(&gguf(&[], 16, 63)) {
            Err(GgufError::Truncated { needed, actual }) => {
                assert_eq!(
                    (needed, actual),
                    (whole.len() as u64, whole.len() as u64 - 1)
                );
            }
            other => panic!("{other:?}"),
        }
        for cut in [3, 10, 30, 60] {
            let error = read(&whole[..cut]).unwrap_err();
            assert!(
                matches!(error, GgufError::NotGguf | GgufError::Malformed(_)),
                "cut at {cut}: {error:?}"
            );
        }
    }

    #[test]
    fn absurd_counts_are_malformed_not_allocated() {
        let mut bytes = gguf(&[], 16, 64);
        // The metadata count, claimed to be huge.
        bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(read(&bytes), Err(GgufError::Malformed(_))));
    }
}
