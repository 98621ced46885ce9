// Python module `scaling_train._C`: importing it loads this library, whose static initialisers
// register the torch.ops.scaling_train.* operators (see registration.cpp). It exports nothing else.
#include <Python.h>

static struct PyModuleDef scaling_train_c_module = {
    PyModuleDef_HEAD_INIT, "_C", "C++ CPU kernels of scaling_train, registered as torch.ops.scaling_train.*", -1,
    nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&scaling_train_c_module); }
