"""diskrobust MONAI Label app: infer tasks in lib.infers."""
