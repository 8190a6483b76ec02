/* The extension's Python face: an empty module, so that importing encanalyze._backends._cells
   (as package walkers do) works; the kernels in cells.c are called through ctypes. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static struct PyModuleDef cells_module = {
    PyModuleDef_HEAD_INIT, "_cells",
    "Compiled host kernels of encanalyze (called through ctypes; see _compiled.py).", -1, NULL,
};

PyMODINIT_FUNC PyInit__cells(void) { return PyModule_Create(&cells_module); }
