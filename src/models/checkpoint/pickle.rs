//! An inert reader for `torch.save` files (`.ckpt`, `.pt`, `.pth`): it rebuilds the list of
//! tensors a checkpoint holds and never runs anything.
//!
//! A pickle is a program for Python's pickle machine, and any global it names gets called:
//! that is how a `.ckpt` can run code on the machine that opens it. This reader is a small
//! pickle machine of its own that knows only data: containers, numbers, strings, and the handful
//! of globals a state dict is made of (`OrderedDict`, torch's tensor rebuild functions and
//! storage types, and a few inert types that training checkpoints carry, the list A1111's safe
//! unpickler allows). Any other global is refused with its name before anything else happens;
//! nothing here can call into Python or the system, so even an allowed name only builds a value.
//!
//! Zip-format files (every `torch.save` since PyTorch 1.6) hold the pickle in `<name>/data.pkl`
//! and each storage as an uncompressed entry `<name>/data/<key>`; tensors are located inside
//! those entries and read later like safetensors data. The older non-zip format is refused.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;

use crate::models::tensor_file::{ElemType, TensorInfo};

#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    #[error(
        "refused: the pickle calls {0}, which is not tensor data (a .ckpt can run code; Easel \
         reads only tensors from it)"
    )]
    Refused(String),
    #[error("a PyTorch file in the legacy (pre-1.6, non-zip) format, which Easel does not read; convert it to .safetensors")]
    LegacyFormat,
    #[error("damaged pickle: {0}")]
    Malformed(String),
    #[error("not a readable PyTorch zip file (truncated, damaged, or another format): {0}")]
    Zip(String),
}

fn malformed(msg: impl Into<String>) -> PickleError {
    PickleError::Malformed(msg.into())
}

/// The largest `data.pkl` read (real checkpoints' are well under 10 MB).
const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// Indexes the tensors of a zip-format `torch.save` file. A `{"state_dict": …}` wrapper is
/// looked through; everything that is not a tensor (step counters, optimiser state) is skipped.
pub fn read_torch_zip(
    file: &mut File,
    file_len: u64,
) -> Result<BTreeMap<String, TensorInfo>, PickleError> {
    let mut zip = zip::ZipArchive::new(file).map_err(|e| PickleError::Zip(e.to_string()))?;
    let pkl_name = zip
        .file_names()
        .filter_map(|n| n.ok())
        .filter(|n| n.ends_with("data.pkl"))
        .min_by_key(|n| n.len())
        .map(|n| n.to_string())
        .ok_or_else(|| PickleError::Zip("no data.pkl inside (not a torch.save file)".into()))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let pickle = {
        let entry = zip
            .by_name(&pkl_name)
            .map_err(|e| PickleError::Zip(e.to_string()))?;
        if entry.size() > MAX_PICKLE_BYTES {
            return Err(malformed(format!("{pkl_name} is {} bytes", entry.size())));
        }
        let mut buf = Vec::with_capacity(entry.size() as usize);
        entry
            .take(MAX_PICKLE_BYTES)
            .read_to_end(&mut buf)
            .map_err(|e| PickleError::Zip(format!("{pkl_name}: {e}")))?;
        buf
    };
    let root = Machine::default().run(&pickle)?;
    let mut out = BTreeMap::new();
    let mut storages: HashMap<String, (u64, u64)> = HashMap::new();
    for (name, t) in state_dict_tensors(root)? {
        let (start, size) = match storages.get(&t.storage.key) {
            Some(s) => *s,
            None => {
                let entry_name = format!("{prefix}data/{}", t.storage.key);
                let entry = zip.by_name(&entry_name).map_err(|e| {
                    PickleError::Zip(format!("storage {entry_name} of {name}: {e}"))
                })?;
                if entry.compression() != zip::CompressionMethod::Stored {
                    return Err(PickleError::Zip(format!(
                        "storage {entry_name} is compressed ({}); torch.save writes it stored",
                        entry.compression()
                    )));
                }
                let start = entry.data_start().ok_or_else(|| {
                    PickleError::Zip(format!("storage {entry_name}: no data offset"))
                })?;
                let s = (start, entry.size());
                storages.insert(t.storage.key.clone(), s);
                s
            }
        };
        let elem = t.storage.dtype.size() as u64;
        let skip = t.offset.saturating_mul(elem);
        if start.saturating_add(size) > file_len {
            return Err(malformed(format!(
                "storage of {name} runs past the end of the file"
            )));
        }
        let contiguous = is_contiguous(&t.shape, &t.strides);
        out.insert(
            name,
            TensorInfo {
                dtype: t.storage.dtype,
                offset: start + skip,
                span: size.saturating_sub(skip),
                strides: (!contiguous).then_some(t.strides),
                shape: t.shape,
            },
        );
    }
    Ok(out)
}

fn is_contiguous(shape: &[usize], strides: &[usize]) -> bool {
    let mut expected = 1usize;
    for (d, s) in shape.iter().zip(strides).rev() {
        if *d != 1 && *s != expected {
            return false;
        }
        expected = expected.saturating_mul(*d);
    }
    true
}

/// The named tensors of the checkpoint's state dict.
fn state_dict_tensors(root: Value) -> Result<Vec<(String, Rebuilt)>, PickleError> {
    let Value::Dict(mut entries) = root else {
        return Err(malformed("the pickle does not hold a dict of tensors"));
    };
    let wrapped = entries
        .iter()
        .position(|(k, v)| matches!((k, v), (Value::Str(k), Value::Dict(_)) if k == "state_dict"));
    if let Some(i) = wrapped {
        if let (_, Value::Dict(inner)) = entries.swap_remove(i) {
            entries = inner;
        }
    }
    Ok(entries
        .into_iter()
        .flat_map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Tensor(t)) => vec![(k, t)],
            // A1111's textual-inversion files: {"string_to_param": {"*": tensor}, …}.
            (Value::Str(k), Value::Dict(inner)) if k == "string_to_param" => inner
                .into_iter()
                .filter_map(|(name, v)| match (name, v) {
                    (Value::Str(name), Value::Tensor(t)) => Some((format!("{k}.{name}"), t)),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        })
        .collect())
}

/// What a global name may be: the only things this machine can "call".
#[derive(Debug, Clone, PartialEq)]
enum Callable {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    StorageType(ElemType),
    /// A data type that training checkpoints carry (numpy scalars, Lightning callbacks):
    /// calling it yields an opaque value.
    Inert,
}

/// The globals a checkpoint may name; everything else is refused.
fn resolve_global(module: &str, name: &str) -> Result<Callable, PickleError> {
    use Callable as C;
    let storage = |t| Ok(C::StorageType(t));
    match (module, name) {
        ("collections", "OrderedDict") => Ok(C::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Ok(C::RebuildTensor),
        ("torch._utils", "_rebuild_parameter") => Ok(C::RebuildParameter),
        ("torch", "FloatStorage") => storage(ElemType::F32),
        ("torch", "HalfStorage") => storage(ElemType::F16),
        ("torch", "BFloat16Storage") => storage(ElemType::BF16),
        ("torch", "DoubleStorage") => storage(ElemType::F64),
        ("torch", "LongStorage") => storage(ElemType::I64),
        ("torch", "IntStorage") => storage(ElemType::I32),
        ("torch", "ShortStorage") => storage(ElemType::I16),
        ("torch", "CharStorage") => storage(ElemType::I8),
        ("torch", "ByteStorage") => storage(ElemType::U8),
        ("torch", "BoolStorage") => storage(ElemType::Bool),
        ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar" | "_reconstruct")
        | ("numpy", "dtype" | "ndarray")
        | ("_codecs", "encode")
        | ("builtins" | "__builtin__", "set")
        | ("torch", "Size")
        | ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint") => Ok(C::Inert),
        _ => Err(PickleError::Refused(format!("{module}.{name}"))),
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Storage {
    dtype: ElemType,
    key: String,
}

#[derive(Debug, Clone, PartialEq)]
struct Rebuilt {
    storage: Storage,
    offset: u64,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Callable),
    Storage(Storage),
    Tensor(Rebuilt),
    Opaque,
}

/// The pickle machine: a stack, a stack of marks, and the memo.
#[derive(Default)]
struct Machine {
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| malformed("ends in the middle of an instruction"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, PickleError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn len64(&mut self) -> Result<usize, PickleError> {
        usize::try_from(self.u64()?).map_err(|_| malformed("length overflows"))
    }
    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| malformed("unterminated text argument"))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| malformed("text is not UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }
    fn string(&mut self, n: usize) -> Result<String, PickleError> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| malformed("string is not UTF-8"))
    }
}

impl Machine {
    fn pop(&mut self) -> Result<Value, PickleError> {
        // A mark above the top of the stack means the stack was emptied past it.
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(malformed("pop across a mark"));
        }
        self.stack
            .pop()
            .ok_or_else(|| malformed("pop from an empty stack"))
    }
    fn top(&mut self) -> Result<&mut Value, PickleError> {
        self.stack
            .last_mut()
            .ok_or_else(|| malformed("empty stack"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let m = self.marks.pop().ok_or_else(|| malformed("no mark"))?;
        if m > self.stack.len() {
            return Err(malformed("mark past the top of the stack"));
        }
        Ok(self.stack.split_off(m))
    }
    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    fn run(mut self, data: &[u8]) -> Result<Value, PickleError> {
        let mut r = Reader { data, pos: 0 };
        loop {
            let op = r.u8()?;
            match op {
                0x80 => {
                    r.u8()?; // PROTO
                }
                0x95 => {
                    r.u64()?; // FRAME: a hint only
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self.push(Value::Dict(Vec::new())),
                b']' => self.push(Value::List(Vec::new())),
                b')' => self.push(Value::Tuple(Vec::new())),
                0x8f => self.push(Value::Opaque), // EMPTY_SET
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'J' => {
                    let v = r.u32()? as i32;
                    self.push(Value::Int(v.into()));
                }
                b'K' => {
                    let v = r.u8()?;
                    self.push(Value::Int(v.into()));
                }
                b'M' => {
                    let v = r.u16()?;
                    self.push(Value::Int(v.into()));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        r.u8()? as usize
                    } else {
                        r.u32()? as usize
                    };
                    let b = r.take(n)?;
                    self.push(long_from_bytes(b));
                }
                b'I' => {
                    let line = r.line()?;
                    let v = match line {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => Value::Int(line.parse().map_err(|_| malformed("bad INT"))?),
                    };
                    self.push(v);
                }
                b'G' => {
                    let b = r.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Value::Float(f64::from_be_bytes(a)));
                }
                b'X' => {
                    let n = r.u32()? as usize;
                    let s = r.string(n)?;
                    self.push(Value::Str(s));
                }
                0x8c => {
                    let n = r.u8()? as usize;
                    let s = r.string(n)?;
                    self.push(Value::Str(s));
                }
                0x8d => {
                    let n = r.len64()?;
                    let s = r.string(n)?;
                    self.push(Value::Str(s));
                }
                b'T' | b'U' | b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'T' | b'B' => r.u32()? as usize,
                        b'U' | b'C' => r.u8()? as usize,
                        _ => r.len64()?,
                    };
                    let b = r.take(n)?.to_vec();
                    self.push(Value::Bytes(b));
                }
                b'q' => {
                    let i = r.u8()?.into();
                    self.memoize(i)?;
                }
                b'r' => {
                    let i = r.u32()?;
                    self.memoize(i)?;
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| malformed("memo"))?;
                    self.memoize(i)?;
                }
                b'h' | b'j' => {
                    let i = if op == b'h' { r.u8()?.into() } else { r.u32()? };
                    let v = self
                        .memo
                        .get(&i)
                        .cloned()
                        .ok_or_else(|| malformed(format!("memo {i} was never stored")))?;
                    self.push(v);
                }
                b'c' => {
                    let module = r.line()?;
                    let name = r.line()?;
                    let c = resolve_global(module, name)?;
                    self.push(Value::Global(c));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(malformed("STACK_GLOBAL without two strings"));
                    };
                    let c = resolve_global(&module, &name)?;
                    self.push(Value::Global(c));
                }
                b'i' => {
                    // INST: a global and a call in one; the same rule applies.
                    let module = r.line()?;
                    let name = r.line()?;
                    let c = resolve_global(module, name)?;
                    let args = self.pop_mark()?;
                    let v = call(c, Value::Tuple(args))?;
                    self.push(v);
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err(malformed("OBJ without a class"));
                    }
                    let cls = items.remove(0);
                    let Value::Global(c) = cls else {
                        return Err(malformed("OBJ of a non-class"));
                    };
                    let v = call(c, Value::Tuple(items))?;
                    self.push(v);
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(items));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let d = pairs(items)?;
                    self.push(Value::Dict(d));
                }
                0x91 => {
                    self.pop_mark()?;
                    self.push(Value::Opaque); // FROZENSET
                }
                b'a' => {
                    let v = self.pop()?;
                    extend(self.top()?, vec![v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    extend(self.top()?, items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    set_items(self.top()?, vec![(k, v)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let items = pairs(items)?;
                    set_items(self.top()?, items)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let Value::Global(c) = callable else {
                        return Err(malformed("REDUCE of something not callable"));
                    };
                    let v = call(c, args)?;
                    self.push(v);
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let Value::Global(c) = cls else {
                        return Err(malformed("NEWOBJ of a non-class"));
                    };
                    let v = call(c, args)?;
                    self.push(v);
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let Value::Global(c) = cls else {
                        return Err(malformed("NEWOBJ_EX of a non-class"));
                    };
                    let v = call(c, args)?;
                    self.push(v);
                }
                b'b' => {
                    // BUILD sets an object's state; for the values built here it changes nothing.
                    self.pop()?;
                    self.top()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = persistent_load(pid)?;
                    self.push(v);
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v);
                }
                other => {
                    return Err(malformed(format!(
                        "unsupported instruction 0x{other:02x} at byte {}",
                        r.pos - 1
                    )))
                }
            }
        }
    }

    fn memoize(&mut self, i: u32) -> Result<(), PickleError> {
        let v = self
            .stack
            .last()
            .cloned()
            .ok_or_else(|| malformed("memo of nothing"))?;
        self.memo.insert(i, v);
        Ok(())
    }
}

fn long_from_bytes(b: &[u8]) -> Value {
    if b.len() > 8 {
        return Value::Opaque;
    }
    let negative = b.last().is_some_and(|&x| x & 0x80 != 0);
    let mut a = [if negative { 0xff } else { 0 }; 8];
    a[..b.len()].copy_from_slice(b);
    Value::Int(i64::from_le_bytes(a))
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, PickleError> {
    if !items.len().is_multiple_of(2) {
        return Err(malformed("odd number of dict items"));
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn extend(target: &mut Value, items: Vec<Value>) -> Result<(), PickleError> {
    match target {
        Value::List(l) => {
            l.extend(items);
            Ok(())
        }
        Value::Opaque => Ok(()),
        _ => Err(malformed("append to something that is not a list")),
    }
}

fn set_items(target: &mut Value, items: Vec<(Value, Value)>) -> Result<(), PickleError> {
    match target {
        Value::Dict(d) => {
            for (k, v) in items {
                match d.iter_mut().find(|(old, _)| *old == k) {
                    Some(slot) => slot.1 = v,
                    None => d.push((k, v)),
                }
            }
            Ok(())
        }
        Value::Opaque => Ok(()),
        _ => Err(malformed("set item on something that is not a dict")),
    }
}

/// What calling an allowed global builds.
fn call(c: Callable, args: Value) -> Result<Value, PickleError> {
    let Value::Tuple(args) = args else {
        return Err(malformed("call arguments are not a tuple"));
    };
    match c {
        Callable::OrderedDict => Ok(Value::Dict(Vec::new())),
        Callable::RebuildParameter => match args.into_iter().next() {
            Some(t @ Value::Tensor(_)) => Ok(t),
            _ => Err(malformed("_rebuild_parameter without a tensor")),
        },
        Callable::RebuildTensor => rebuild_tensor(args),
        Callable::StorageType(_) | Callable::Inert => Ok(Value::Opaque),
    }
}

fn ints(v: &Value) -> Option<Vec<usize>> {
    let Value::Tuple(items) = v else { return None };
    items
        .iter()
        .map(|i| match i {
            Value::Int(n) => usize::try_from(*n).ok(),
            _ => None,
        })
        .collect()
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks, …)`.
fn rebuild_tensor(args: Vec<Value>) -> Result<Value, PickleError> {
    let bad = || malformed("_rebuild_tensor_v2 with unexpected arguments");
    let storage = match args.first() {
        Some(Value::Storage(s)) => s.clone(),
        _ => return Err(bad()),
    };
    let offset = match args.get(1) {
        Some(Value::Int(o)) => u64::try_from(*o).map_err(|_| bad())?,
        _ => return Err(bad()),
    };
    let shape = args.get(2).and_then(ints).ok_or_else(bad)?;
    let strides = args.get(3).and_then(ints).ok_or_else(bad)?;
    if shape.len() != strides.len() {
        return Err(bad());
    }
    if shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .is_none()
    {
        return Err(malformed("tensor shape overflows"));
    }
    Ok(Value::Tensor(Rebuilt {
        storage,
        offset,
        shape,
        strides,
    }))
}

/// torch's persistent ids: `("storage", StorageType, key, location, numel)`.
fn persistent_load(pid: Value) -> Result<Value, PickleError> {
    let Value::Tuple(items) = pid else {
        return Err(malformed("persistent id is not a tuple"));
    };
    match items.as_slice() {
        [Value::Str(kind), Value::Global(Callable::StorageType(dtype)), Value::Str(key), ..]
            if kind == "storage" =>
        {
            Ok(Value::Storage(Storage {
                dtype: *dtype,
                key: key.clone(),
            }))
        }
        _ => Err(malformed("persistent id is not a tensor storage")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pickle.dumps({"a": 1, "b": [2, "x"]}, protocol=2)`.
    #[test]
    fn plain_containers() {
        let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x01\x00\x00\x00bq\x02]q\x03(K\x02X\x01\x00\x00\x00xq\x04eu.";
        let v = Machine::default().run(data).unwrap();
        assert_eq!(
            v,
            Value::Dict(vec![
                (Value::Str("a".into()), Value::Int(1)),
                (
                    Value::Str("b".into()),
                    Value::List(vec![Value::Int(2), Value::Str("x".into())])
                ),
            ])
        );
    }

    /// `class P: __reduce__ = lambda self: (os.system, ("touch x",))`, pickled at protocol 2
    /// and at protocol 4 (STACK_GLOBAL).
    #[test]
    fn unknown_globals_are_refused_by_name() {
        let p2 = b"\x80\x02cposix\nsystem\nq\x00X\x07\x00\x00\x00touch xq\x01\x85q\x02Rq\x03.";
        let err = Machine::default().run(p2).unwrap_err().to_string();
        assert!(
            err.contains("posix.system") && err.contains("refused"),
            "{err}"
        );
        let p4 = b"\x80\x04\x95\x1e\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94\x8c\x07touch x\x94\x85\x94R\x94.";
        let err = Machine::default().run(p4).unwrap_err().to_string();
        assert!(err.contains("posix.system"), "{err}");
    }

    #[test]
    fn truncated_or_garbage_pickles_are_errors() {
        for data in [&b"\x80\x02}q"[..], b"", b"\xff\xff", b"\x80\x02(t0000."] {
            assert!(Machine::default().run(data).is_err(), "{data:?}");
        }
    }

    #[test]
    fn contiguity() {
        assert!(is_contiguous(&[2, 3], &[3, 1]));
        assert!(is_contiguous(&[1, 3], &[100, 1]));
        assert!(!is_contiguous(&[3, 2], &[1, 3]));
        assert!(is_contiguous(&[], &[]));
    }
}
