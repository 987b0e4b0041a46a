# expect: forbidden
# a nested function definition
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    def scale(x):
        return x * 0.5
    update = scale(g)
    return update, var1, var2
