// Overloaded{lambdas...}: one visitor for std::visit built from a lambda per alternative.
#pragma once

namespace cru {

template <typename... Ts>
struct Overloaded : Ts... {
  using Ts::operator()...;
};
template <typename... Ts>
Overloaded(Ts...) -> Overloaded<Ts...>;

}  // namespace cru
