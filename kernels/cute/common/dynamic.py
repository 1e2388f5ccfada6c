"""Lets plain Python helper objects that hold runtime values cross dynamic control flow.

The DSL carries every object used inside a runtime ``while``/``for``/``if`` as SSA values. An
object that mixes compile-time settings (ints, floats, bools) with runtime values (``Int32``,
register tensors) exposes only the latter; the former are copied as they are.
"""

import copy

import cutlass

_STATIC_TYPES = (int, float, bool, str, type(None), tuple)


class RuntimeFields:
    def _runtime_field_names(self) -> list[str]:
        return [name for name, v in vars(self).items() if not name.startswith("_") and not isinstance(v, _STATIC_TYPES)]

    def __extract_mlir_values__(self):
        values, counts = [], []
        for name in self._runtime_field_names():
            field_values = cutlass.extract_mlir_values(getattr(self, name))
            values += field_values
            counts.append(len(field_values))
        self._value_counts = counts
        return values

    def __new_from_mlir_values__(self, values):
        obj = copy.copy(self)
        pos = 0
        for name, count in zip(self._runtime_field_names(), self._value_counts, strict=True):
            setattr(obj, name, cutlass.new_from_mlir_values(getattr(self, name), values[pos : pos + count]))
            pos += count
        return obj
