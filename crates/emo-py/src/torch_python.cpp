// The bridge between a tch tensor (a heap-allocated at::Tensor) and a Python torch.Tensor: both hold the same
// TensorImpl, so neither side copies. C linkage, exceptions turned into null returns.
#include <torch/csrc/autograd/python_variable.h>

extern "C" {

int emo_thp_check(PyObject* obj) {
  try {
    return THPVariable_Check(obj) ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

// A new reference to a Python tensor sharing `t`'s storage, or null with a Python error set.
PyObject* emo_thp_wrap(const at::Tensor* t) {
  try {
    return THPVariable_Wrap(*t);
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}

// A new heap at::Tensor sharing the Python tensor's storage (tch owns and frees it), or null.
at::Tensor* emo_thp_unpack(PyObject* obj) {
  try {
    return new at::Tensor(THPVariable_Unpack(obj));
  } catch (...) {
    return nullptr;
  }
}
}
