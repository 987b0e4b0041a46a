# expect: syntax
# inconsistent indentation
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = g
      var1 = var1
    return update, var1, var2
