# expect: forbidden
# an import inside the function
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    import numpy as np
    update = np.sign(g)
    return update, var1, var2
