//! What torch's pickles mean: element types, the whitelisted globals, storages from
//! persistent ids, `_rebuild_tensor*` and `_rebuild_parameter*` (interpreted, never called),
//! and the state dict inside the unpickled object.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;

use super::pickle::{Key, Machine, Obj, Unpickled, Value, MAX_DIMS};
use super::{bad, unsafe_pickle};
use crate::error::Result;
use crate::limits::MAX_TENSORS;

// ---------------------------------------------------------------------------------------------
// Element types

/// An element type as the reader converts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DType {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I8,
    U8,
}

/// One torch element type: its storage class (if it has one), dtype names, size in bytes and,
/// for types this reader converts, how. Types it does not convert are still listed so that
/// legacy files can skip their data and errors can name them.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ElemInfo {
    pub(super) storage: Option<&'static str>,
    pub(super) dtypes: &'static [&'static str],
    pub(super) size: usize,
    pub(super) dtype: Option<DType>,
}

pub(super) type Elem = &'static ElemInfo;

pub(super) const fn elem(
    storage: Option<&'static str>,
    dtypes: &'static [&'static str],
    size: usize,
    dtype: Option<DType>,
) -> ElemInfo {
    ElemInfo { storage, dtypes, size, dtype }
}

pub(super) static ELEMS: [ElemInfo; 26] = [
    elem(Some("Float"), &["float32", "float"], 4, Some(DType::F32)),
    elem(Some("Double"), &["float64", "double"], 8, Some(DType::F64)),
    elem(Some("Half"), &["float16", "half"], 2, Some(DType::F16)),
    elem(Some("BFloat16"), &["bfloat16"], 2, Some(DType::BF16)),
    elem(Some("Long"), &["int64", "long"], 8, Some(DType::I64)),
    elem(Some("Int"), &["int32", "int"], 4, Some(DType::I32)),
    elem(Some("Char"), &["int8"], 1, Some(DType::I8)),
    elem(Some("Byte"), &["uint8"], 1, Some(DType::U8)),
    elem(Some("Short"), &["int16", "short"], 2, None),
    elem(Some("Bool"), &["bool"], 1, None),
    elem(Some("ComplexFloat"), &["complex64", "cfloat"], 8, None),
    elem(Some("ComplexDouble"), &["complex128", "cdouble"], 16, None),
    elem(Some("QUInt8"), &["quint8"], 1, None),
    elem(Some("QInt8"), &["qint8"], 1, None),
    elem(Some("QInt32"), &["qint32"], 4, None),
    elem(Some("QUInt4x2"), &["quint4x2"], 1, None),
    elem(Some("QUInt2x4"), &["quint2x4"], 1, None),
    elem(None, &["complex32", "chalf"], 4, None),
    elem(None, &["uint16"], 2, None),
    elem(None, &["uint32"], 4, None),
    elem(None, &["uint64"], 8, None),
    elem(None, &["float8_e4m3fn"], 1, None),
    elem(None, &["float8_e5m2"], 1, None),
    elem(None, &["float8_e4m3fnuz"], 1, None),
    elem(None, &["float8_e5m2fnuz"], 1, None),
    elem(None, &["float8_e8m0fnu"], 1, None),
];

/// `torch.UntypedStorage` holds bytes; torch treats it as uint8.
pub(super) fn untyped() -> Elem {
    &ELEMS[7]
}

pub(super) fn elem_by_storage(class: &str) -> Option<Elem> {
    let prefix = class.strip_suffix("Storage")?;
    ELEMS.iter().find(|e| e.storage == Some(prefix))
}

pub(super) fn elem_by_dtype(name: &str) -> Option<Elem> {
    ELEMS.iter().find(|e| e.dtypes.contains(&name))
}

impl ElemInfo {
    pub(super) fn name(&self) -> &'static str {
        self.dtypes[0]
    }
}

// ---------------------------------------------------------------------------------------------
// Values of the pickle machine

/// The globals a state dict may name. None is ever called: REDUCE interprets them.
#[derive(Clone, Debug)]
pub(super) enum Global {
    OrderedDict,
    /// `_rebuild_tensor(storage, offset, size, stride)`
    RebuildTensor,
    /// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`
    RebuildTensorV2,
    /// `_rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype[, metadata])`
    RebuildTensorV3,
    /// `_rebuild_parameter(tensor, requires_grad, hooks)`
    RebuildParameter,
    /// `_rebuild_parameter_with_state(tensor, requires_grad, hooks, state)`
    RebuildParameterWithState,
    /// A storage class, e.g. `torch.FloatStorage`; only ever a tag inside a persistent id.
    StorageType(Elem),
    /// A dtype, e.g. `torch.float32` (argument of `_rebuild_tensor_v3`).
    Dtype(Elem),
}

/// Maps `module.name` to a whitelisted global, or `None` for anything else.
pub(super) fn resolve_global(module: &str, name: &str) -> Option<Global> {
    match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor") => Some(Global::RebuildTensor),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_tensor_v3") => Some(Global::RebuildTensorV3),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch._utils", "_rebuild_parameter_with_state") => Some(Global::RebuildParameterWithState),
        ("torch" | "torch.storage", "UntypedStorage") => Some(Global::StorageType(untyped())),
        // Files saved from a GPU by old torch name `torch.cuda.FloatStorage`; the data is the
        // same and this reader does not care where it was.
        ("torch" | "torch.cuda", class) if class.ends_with("Storage") => {
            elem_by_storage(class).map(Global::StorageType)
        }
        ("torch", dtype) => elem_by_dtype(dtype).map(Global::Dtype),
        _ => None,
    }
}

/// Where a storage view starts and how long it is, in bytes of its root storage.
#[derive(Clone, Copy, Debug)]
pub(super) struct StorageView {
    pub(super) storage: usize,
    pub(super) offset: usize,
    pub(super) len: usize,
}

/// A storage as persistent ids describe it.
pub(super) struct StorageEntry {
    pub(super) key: Rc<str>,
    pub(super) elem: Elem,
    /// In elements of `elem`.
    pub(super) numel: usize,
}

impl StorageEntry {
    pub(super) fn nbytes(&self) -> Option<usize> {
        self.numel.checked_mul(self.elem.size)
    }
}

/// A tensor as `_rebuild_tensor*` describes it; gathered once the storages are known.
pub(super) struct TensorRef {
    pub(super) view: StorageView,
    pub(super) elem: Elem,
    /// In elements of `elem`, like the strides.
    pub(super) offset: usize,
    pub(super) shape: Vec<usize>,
    pub(super) stride: Vec<usize>,
}

/// What the pickles of one file share: storages and tensors found by persistent ids.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) storages: Vec<StorageEntry>,
    pub(super) by_key: HashMap<Rc<str>, usize>,
    pub(super) tensors: Vec<TensorRef>,
}

impl Machine<'_> {
    pub(super) fn global(&self, module: &str, name: &str) -> Result<Value> {
        resolve_global(module, name)
            .map(Value::Global)
            .ok_or_else(|| unsafe_pickle(self.path, format!("the global `{module}.{name}`")))
    }

    /// BINPERSID: a storage, `('storage', type, key, location, numel[, view_metadata])`.
    pub(super) fn persistent_load(&mut self, at: usize, pid: &Value) -> Result<Value> {
        let Value::Tuple(t) = pid else {
            return Err(self.bad(at, format!("persistent id is a {}", pid.kind())));
        };
        match t.first() {
            Some(Value::Str(s)) if &**s == "storage" => {}
            Some(Value::Str(s)) => return Err(unsafe_pickle(self.path, format!("a persistent id of type `{s}`"))),
            _ => return Err(self.bad(at, "persistent id without a type name")),
        }
        if t.len() != 5 && t.len() != 6 {
            return Err(self.bad(at, format!("storage persistent id has {} fields", t.len())));
        }
        let elem = match &t[1] {
            Value::Global(Global::StorageType(e)) => *e,
            other => return Err(self.bad(at, format!("storage type is a {}, not a storage class", other.kind()))),
        };
        let key: Rc<str> = match &t[2] {
            Value::Str(s) => s.clone(),
            other => return Err(self.bad(at, format!("storage key is a {}", other.kind()))),
        };
        let numel = self.usize_of(at, &t[4], "storage size")?;
        let index = match self.shared.by_key.get(&key) {
            Some(&i) => {
                let s = &self.shared.storages[i];
                if s.elem != elem || s.numel != numel {
                    return Err(self.bad(
                        at,
                        format!(
                            "storage `{key}` is described twice, as {} x {} and as {} x {}",
                            s.numel,
                            s.elem.name(),
                            numel,
                            elem.name()
                        ),
                    ));
                }
                i
            }
            None => {
                if self.shared.storages.len() >= MAX_TENSORS {
                    return Err(self.bad(at, format!("more than {MAX_TENSORS} storages")));
                }
                self.shared.storages.push(StorageEntry { key: key.clone(), elem, numel });
                let i = self.shared.storages.len() - 1;
                self.shared.by_key.insert(key.clone(), i);
                i
            }
        };
        let root_bytes = self.shared.storages[index]
            .nbytes()
            .ok_or_else(|| self.bad(at, format!("storage `{key}` is too large")))?;
        let mut view = StorageView { storage: index, offset: 0, len: root_bytes };
        // Legacy view metadata `(view_key, offset, size)`, in elements: torch < 0.4 could save
        // a view of part of a storage.
        if let Some(Value::Tuple(v)) = t.get(5) {
            if v.len() != 3 {
                return Err(self.bad(at, "storage view metadata must have 3 fields"));
            }
            let offset = self.usize_of(at, &v[1], "storage view offset")?;
            let size = self.usize_of(at, &v[2], "storage view size")?;
            let start = offset.checked_mul(elem.size);
            let len = size.checked_mul(elem.size);
            match (start, len) {
                (Some(s), Some(l)) if s.checked_add(l).is_some_and(|e| e <= root_bytes) => {
                    view.offset = s;
                    view.len = l;
                }
                _ => {
                    return Err(self
                        .bad(at, format!("view [{offset}, +{size}) lies outside storage `{key}` of {numel} elements")))
                }
            }
        } else if let Some(v) = t.get(5).filter(|v| !matches!(v, Value::None)) {
            return Err(self.bad(at, format!("storage view metadata is a {}", v.kind())));
        }
        Ok(Value::Storage(view))
    }

    pub(super) fn usize_of(&self, at: usize, v: &Value, what: &str) -> Result<usize> {
        match v {
            Value::Int(i) => usize::try_from(*i)
                .ok()
                .filter(|&u| u <= i64::MAX as usize)
                .ok_or_else(|| self.bad(at, format!("{what} {i} is out of range"))),
            other => Err(self.bad(at, format!("{what} is a {}, not an int", other.kind()))),
        }
    }

    pub(super) fn dims(&self, at: usize, v: &Value, what: &str) -> Result<Vec<usize>> {
        let Value::Tuple(t) = v else {
            return Err(self.bad(at, format!("tensor {what} is a {}", v.kind())));
        };
        if t.len() > MAX_DIMS {
            return Err(self.bad(at, format!("tensor has {} dimensions", t.len())));
        }
        t.iter().map(|d| self.usize_of(at, d, what)).collect()
    }

    /// REDUCE: `callable(*args)` for the whitelisted callables, interpreted, never called.
    pub(super) fn reduce(&mut self, at: usize, callable: Value, args: Value) -> Result<Value> {
        let Value::Global(g) = callable else {
            return Err(self.bad(at, format!("REDUCE calls a {}", callable.kind())));
        };
        let Value::Tuple(args) = args else {
            return Err(self.bad(at, format!("REDUCE arguments are a {}", args.kind())));
        };
        let arity = |ok: &[usize], name: &str| -> Result<()> {
            if ok.contains(&args.len()) {
                Ok(())
            } else {
                Err(self.bad(at, format!("{name} called with {} arguments", args.len())))
            }
        };
        match g {
            Global::OrderedDict => {
                arity(&[0, 1], "OrderedDict")?;
                self.ordered_dict(at, args.first())
            }
            Global::RebuildTensor | Global::RebuildTensorV2 | Global::RebuildTensorV3 => {
                let dtype = match g {
                    Global::RebuildTensor => {
                        arity(&[4], "_rebuild_tensor")?;
                        None
                    }
                    Global::RebuildTensorV2 => {
                        arity(&[6, 7], "_rebuild_tensor_v2")?;
                        None
                    }
                    _ => {
                        arity(&[7, 8], "_rebuild_tensor_v3")?;
                        match &args[6] {
                            Value::Global(Global::Dtype(e)) => Some(*e),
                            other => {
                                return Err(self.bad(at, format!("_rebuild_tensor_v3 dtype is a {}", other.kind())))
                            }
                        }
                    }
                };
                let Value::Storage(view) = args[0] else {
                    return Err(self.bad(at, format!("tensor storage is a {}", args[0].kind())));
                };
                let storage_elem = self
                    .shared
                    .storages
                    .get(view.storage)
                    .map(|s| s.elem)
                    .ok_or_else(|| self.bad(at, "unknown storage"))?;
                let offset = self.usize_of(at, &args[1], "storage offset")?;
                let shape = self.dims(at, &args[2], "size")?;
                let stride = self.dims(at, &args[3], "stride")?;
                if shape.len() != stride.len() {
                    return Err(
                        self.bad(at, format!("tensor size has {} dimensions but stride {}", shape.len(), stride.len()))
                    );
                }
                if self.shared.tensors.len() >= MAX_TENSORS {
                    return Err(self.bad(at, format!("more than {MAX_TENSORS} tensors")));
                }
                self.shared.tensors.push(TensorRef {
                    view,
                    elem: dtype.unwrap_or(storage_elem),
                    offset,
                    shape,
                    stride,
                });
                Ok(Value::Tensor(self.shared.tensors.len() - 1))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                if matches!(g, Global::RebuildParameter) {
                    arity(&[3], "_rebuild_parameter")?;
                } else {
                    arity(&[4], "_rebuild_parameter_with_state")?;
                }
                match &args[0] {
                    t @ Value::Tensor(_) => Ok(t.clone()),
                    other => Err(self.bad(at, format!("parameter data is a {}", other.kind()))),
                }
            }
            Global::StorageType(e) => {
                Err(unsafe_pickle(self.path, format!("a call of torch.{}Storage", e.storage.unwrap_or("Untyped"))))
            }
            Global::Dtype(e) => Err(unsafe_pickle(self.path, format!("a call of torch.{}", e.name()))),
        }
    }

    /// `OrderedDict()` or, as Python 2 pickled it, `OrderedDict([[key, value], ...])`.
    fn ordered_dict(&mut self, at: usize, items: Option<&Value>) -> Result<Value> {
        let i = self.new_obj(Obj::Dict(BTreeMap::new()));
        let Some(items) = items else {
            return Ok(Value::Dict(i));
        };
        let pairs: Vec<Value> = match items {
            Value::List(l) => match self.objects.get(*l) {
                Some(Obj::List(v)) => v.clone(),
                _ => Vec::new(),
            },
            Value::Tuple(t) => t.to_vec(),
            other => return Err(self.bad(at, format!("OrderedDict of a {}", other.kind()))),
        };
        // Copies, unlike every other opcode: charge them so that calling this on one big
        // memoized list again and again cannot exhaust memory.
        self.charge(at, pairs.len().saturating_mul(2))?;
        let mut flat = Vec::with_capacity(pairs.len() * 2);
        for p in pairs {
            let kv: &[Value] = match &p {
                Value::Tuple(t) => t,
                Value::List(l) => match self.objects.get(*l) {
                    Some(Obj::List(v)) => v,
                    _ => &[],
                },
                _ => &[],
            };
            if kv.len() != 2 {
                return Err(self.bad(at, "OrderedDict item is not a (key, value) pair"));
            }
            flat.extend(kv.iter().cloned());
        }
        self.dict_insert(at, &Value::Dict(i), flat)?;
        Ok(Value::Dict(i))
    }

    /// BUILD: `target.__setstate__(state)`. The only use in a state dict is the `_metadata`
    /// attribute `Module.state_dict()` sets on its OrderedDict (per-module versions, which
    /// this reader does not need); anything else could run arbitrary `__setstate__` code.
    pub(super) fn build(&self, target: &Value, state: &Value) -> Result<()> {
        if let (Value::Dict(_), Value::Dict(s)) = (target, state) {
            if let Some(Obj::Dict(attrs)) = self.objects.get(*s) {
                if let Some(k) = attrs.keys().find(|k| k.as_str() != Some("_metadata")) {
                    return Err(unsafe_pickle(
                        self.path,
                        format!("BUILD setting the attribute {} on a dict", k.describe()),
                    ));
                }
                return Ok(());
            }
        }
        Err(unsafe_pickle(self.path, format!("BUILD of a {} with a {}", target.kind(), state.kind())))
    }
}

// ---------------------------------------------------------------------------------------------
// From the unpickled object to named tensors

/// The `(name, tensor index)` pairs of the state dict in `top`, names without `module.`.
pub(super) fn state_dict(path: &Path, top: &Unpickled) -> Result<Vec<(String, usize)>> {
    let dict_of = |v: &Value| -> Option<&BTreeMap<Key, Value>> {
        match v {
            Value::Dict(i) => match top.objects.get(*i) {
                Some(Obj::Dict(d)) => Some(d),
                _ => None,
            },
            _ => None,
        }
    };
    let Some(outer) = dict_of(&top.value) else {
        return Err(bad(path, format!("the file holds a {}, not a state dict (a dict of tensors)", top.value.kind())));
    };
    // Training checkpoints wrap the state dict: {"epoch": .., "state_dict": {..}, ..}.
    let inner = ["state_dict", "model"].iter().find_map(|k| outer.get(&Key::Str((*k).into())).and_then(dict_of));
    let dict = inner.unwrap_or(outer);
    let mut out: Vec<(String, usize)> = Vec::with_capacity(dict.len());
    let mut seen = std::collections::BTreeSet::new();
    for (k, v) in dict {
        let Some(name) = k.as_str() else {
            return Err(bad(path, format!("state dict key {} is not a string", k.describe())));
        };
        let t = match v {
            Value::Tensor(t) => *t,
            // A copy of the per-module `_metadata` some tools store as an entry.
            Value::Dict(_) if name == "_metadata" => continue,
            other => return Err(bad(path, format!("state dict entry `{name}` is a {}, not a tensor", other.kind()))),
        };
        // DataParallel / DistributedDataParallel prefix every name with `module.`.
        let name = name.strip_prefix("module.").unwrap_or(name).to_string();
        if !seen.insert(name.clone()) {
            return Err(bad(path, format!("tensor `{name}` appears twice (with and without `module.`)")));
        }
        out.push((name, t));
    }
    Ok(out)
}
